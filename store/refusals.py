"""Which failed inserts are about the rows (dead-lettered, never retried) and which the store.

A row ClickHouse can never take must not stall the writer, and a store that is down must not
lose rows: the batch writer retries the second kind and isolates the first.
"""

from __future__ import annotations

import os
import struct
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

from clickhouse_connect.driver.exceptions import DatabaseError, DataError


class Refused(Exception):
    """The insert failed because of the rows it carried; retrying them as they are is futile.

    Unless the column types were cached (``fresh_types`` False): the table may have changed.
    """

    def __init__(self, error: Exception, *, fresh_types: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.fresh_types = fresh_types


# What a row ClickHouse can never take raises, observed with clickhouse-connect 1.12 / chdb 4.4
# (ClickHouse 26.9), with and without column_types; clickhouse-connect encodes in the client, so
# most never reach the engine:
# - 70000 or -1 into UInt16, 2**63 into Int64: DataError (from struct.error); None into a
#   non-Nullable String: DataError; None into UInt16: TypeError; "abc" into UInt16 or "not a
#   date" into DateTime64: ValueError; a lone surrogate in a String: UnicodeEncodeError (a
#   ValueError); 5 into String or None into DateTime64: AttributeError.
# - refused by the engine: DatabaseError whose ``code`` names the data, e.g. 469
#   VIOLATED_CONSTRAINT, 6 CANNOT_PARSE_TEXT (a string sent for a UInt16 column).
# What an unavailable store raises, for contrast: a missing table is DatabaseError code 60
# UNKNOWN_TABLE; a refused HTTP connection is OperationalError; a chdb path locked by another
# process, another path open in this one, or a closed client is ProgrammingError. So
# ProgrammingError is not about data, and neither is a DatabaseError without a data code
# (HTTP 5xx without one, timeouts, memory, too many parts): those are retried.
_DATA_ERRORS: Final = (
    DataError,
    TypeError,
    ValueError,
    OverflowError,
    AttributeError,
    struct.error,
)
_DATA_ERROR_CODES: Final = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        25,  # CANNOT_PARSE_ESCAPE_SEQUENCE
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        376,  # CANNOT_PARSE_UUID
        407,  # DECIMAL_OVERFLOW
        441,  # CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
        467,  # CANNOT_PARSE_BOOL
        469,  # VIOLATED_CONSTRAINT
        675,  # CANNOT_PARSE_IPV4
        676,  # CANNOT_PARSE_IPV6
        691,  # UNKNOWN_ELEMENT_OF_ENUM
    }
)


def about_data(error: BaseException) -> bool:
    """Whether an insert failed for the rows it carried rather than for the store (above)."""
    if isinstance(error, _DATA_ERRORS):
        return True
    return isinstance(error, DatabaseError) and error.code in _DATA_ERROR_CODES


def describe(error: BaseException) -> str:
    """Type and message, with the cause's: DataError's own text hides the offending value."""
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__
    if cause is not None and str(cause):
        text += f" ({type(cause).__name__}: {cause})"
    return text


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return repr(value)


def append_line(path: Path, line: str) -> None:
    """Append and fsync: a rejected row's waiters are released on the strength of this line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())
