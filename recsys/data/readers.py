"""Reading release files into Spark as raw string columns, after checking their headers.

Every value is read as a string, so that nothing is coerced or dropped by the CSV parser:
:mod:`recsys.data.validation` decides what is valid and quarantines the rest with a
reason. Rows with the wrong number of fields keep their raw text in ``_corrupt_record``.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from recsys import io
from recsys.data.errors import HeaderError, InputFileError
from recsys.data.layouts import TableSpec

CORRUPT = "_corrupt_record"
_BOM = "\ufeff"


def _first_line(uri: str, encoding: str) -> str:
    head = io.read_head(uri, 64 << 10)
    text = head.decode(encoding, errors="replace")
    line = text.split("\n", 1)[0]
    return line.rstrip("\r").lstrip(_BOM)


def check_header(uri: str, spec: TableSpec, encoding: str) -> None:
    """A headed file must start with exactly its layout's header (a BOM and CRLF are fine)."""
    if not spec.has_header:
        return
    line = _first_line(uri, encoding)
    expected = spec.sep.join(spec.columns)
    if not line.strip():
        raise InputFileError(f"{spec.filename} has no header line (expected '{expected}')")
    got = [c.strip().strip('"') for c in line.split(spec.sep)]
    if got != list(spec.columns):
        raise HeaderError(
            f"{spec.filename}: wrong header '{line[:200]}', expected '{expected}'"
        )


def read_raw(spark: SparkSession, uri: str, spec: TableSpec, encoding: str) -> DataFrame:
    """The file as string columns named after ``spec.columns`` plus ``_corrupt_record``."""
    check_header(uri, spec, encoding)
    schema = T.StructType(
        [T.StructField(c, T.StringType(), True) for c in spec.columns]
        + [T.StructField(CORRUPT, T.StringType(), True)]
    )
    reader = (
        spark.read.schema(schema)
        .option("header", spec.has_header)
        .option("sep", spec.sep)
        .option("encoding", encoding)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .option("enforceSchema", True)  # the header was checked above, by name
        .option("ignoreLeadingWhiteSpace", False)
        .option("ignoreTrailingWhiteSpace", False)
    )
    if spec.quote:
        reader = reader.option("quote", spec.quote).option("escape", spec.quote)
    else:
        reader = reader.option("quote", "")  # .dat / 100k files have no quoting
    return reader.csv(uri)
