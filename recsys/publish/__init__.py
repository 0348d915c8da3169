"""Publishing: run-date partitions staged and swapped in atomically, registered as tables."""

from recsys import io


def side_dir(table_uri: str, kind: str) -> str:
    """``<tables>/_<kind>/<table>``: where a table's nights are staged (``staging``), set
    aside (``replaced``) or removed (``expired``), beside the table's directory so that no
    reader of the table sees them."""
    parent, _, name = io.normalize_uri(table_uri).rstrip("/").rpartition("/")
    return io.join(parent, f"_{kind}", name)


class CatalogUnavailableError(RuntimeError):
    """The Spark SQL catalog's metastore cannot be reached or opened (nothing to do with
    the tables themselves: another process holds the embedded one, or the server is down)."""
