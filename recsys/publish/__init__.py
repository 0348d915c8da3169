"""Publishing: run-date partitions staged and swapped in atomically, registered as tables."""


class CatalogUnavailableError(RuntimeError):
    """The Spark SQL catalog's metastore cannot be reached or opened (nothing to do with
    the tables themselves: another process holds the embedded one, or the server is down)."""
