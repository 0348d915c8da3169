"""Data: MovieLens release layouts, readers with validation and quarantine, download, and
the full-scale synthetic corpus generator."""
