"""Publishing: run-date partitions staged and swapped in atomically, registered as tables."""
