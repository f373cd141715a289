"""The project's own record format: one pyarrow schema per task and the validation of one record.

IR record:  id, query, positives (texts), negatives (texts), positive_ids (doc ids where the source
            has them, else empty), source.
STS record: id, sentence1, sentence2, score (float32 in [0, 1], normalised per source), source.

Readers hand raw mappings to :func:`validate_record`, which returns the cleaned record (texts
stripped, score normalised) or raises :class:`InvalidRecord` with one of :data:`REASONS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

IR_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("positives", pa.list_(pa.string()), nullable=False),
        pa.field("negatives", pa.list_(pa.string()), nullable=False),
        pa.field("positive_ids", pa.list_(pa.string()), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)
STS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("sentence1", pa.string(), nullable=False),
        pa.field("sentence2", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)
SCHEMAS = {"ir": IR_SCHEMA, "sts": STS_SCHEMA}

# Why a record is quarantined. The first group is found by readers, the second by validate_record.
MALFORMED_LINE = (
    "malformed_line"  # not parseable (bad JSON, truncated line, wrong number of fields)
)
BAD_ENCODING = "bad_encoding"  # bytes that are not UTF-8
CORRUPT_FILE = "corrupt_file"  # a whole file cannot be opened (reported at line 0)
UNKNOWN_ID = "unknown_id"  # BEIR qrels naming a query or document that does not exist
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_TEXT = "empty_text"
NON_FINITE_SCORE = "non_finite_score"
SCORE_OUT_OF_RANGE = "score_out_of_range"
NO_POSITIVE = "no_positive"
DUPLICATE_ID = "duplicate_id"
REASONS = (
    MALFORMED_LINE,
    BAD_ENCODING,
    CORRUPT_FILE,
    UNKNOWN_ID,
    MISSING_FIELD,
    WRONG_TYPE,
    EMPTY_TEXT,
    NON_FINITE_SCORE,
    SCORE_OUT_OF_RANGE,
    NO_POSITIVE,
    DUPLICATE_ID,
)

# The raw fields a reader may hand over per task (``id`` optional everywhere).
FIELDS = {
    "ir": ("id", "query", "positives", "negatives", "positive_ids"),
    "sts": ("id", "sentence1", "sentence2", "score"),
}


class InvalidRecord(ValueError):
    """A record that cannot be kept; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _text(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if value is None:
        raise InvalidRecord(MISSING_FIELD, f"no {key!r}")
    if not isinstance(value, str):
        raise InvalidRecord(WRONG_TYPE, f"{key!r} is {type(value).__name__}, expected a string")
    value = value.strip()
    if not value:
        raise InvalidRecord(EMPTY_TEXT, f"{key!r} is empty")
    return value


def _texts(raw: Mapping[str, Any], key: str, required: bool) -> list[str]:
    value = raw.get(key)
    if value is None:
        if required:
            raise InvalidRecord(MISSING_FIELD, f"no {key!r}")
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidRecord(
            WRONG_TYPE, f"{key!r} is {type(value).__name__}, expected a list of strings"
        )
    return [_text({f"{key}[{i}]": item}, f"{key}[{i}]") for i, item in enumerate(value)]


def _record_id(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRecord(WRONG_TYPE, f"'id' is {type(value).__name__}, expected a string")
    return _text({"id": str(value)}, "id")


def _score(raw: Mapping[str, Any], score_range: tuple[float, float]) -> float:
    value = raw.get("score")
    if value is None:
        raise InvalidRecord(MISSING_FIELD, "no 'score'")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRecord(WRONG_TYPE, f"'score' is {type(value).__name__}, expected a number")
    if not math.isfinite(value):
        raise InvalidRecord(NON_FINITE_SCORE, f"'score' is {value}")
    low, high = score_range
    if not low <= value <= high:
        raise InvalidRecord(SCORE_OUT_OF_RANGE, f"'score' {value} outside [{low}, {high}]")
    return (value - low) / (high - low)


def validate_ir(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A cleaned IR record (``id`` may be None) from a raw mapping; raises :class:`InvalidRecord`."""
    record = {
        "id": _record_id(raw),
        "query": _text(raw, "query"),
        "positives": _texts(raw, "positives", required=True),
        "negatives": _texts(raw, "negatives", required=False),
        "positive_ids": _texts(raw, "positive_ids", required=False),
    }
    if not record["positives"]:
        raise InvalidRecord(NO_POSITIVE, "the query has no positive")
    if record["positive_ids"] and len(record["positive_ids"]) != len(record["positives"]):
        raise InvalidRecord(
            WRONG_TYPE,
            f"{len(record['positive_ids'])} positive_ids for {len(record['positives'])} positives",
        )
    return record


def validate_sts(raw: Mapping[str, Any], score_range: tuple[float, float]) -> dict[str, Any]:
    """A cleaned STS record with ``score`` mapped from ``score_range`` to [0, 1]."""
    return {
        "id": _record_id(raw),
        "sentence1": _text(raw, "sentence1"),
        "sentence2": _text(raw, "sentence2"),
        "score": _score(raw, score_range),
    }


def validate_record(
    task: str, raw: Mapping[str, Any], score_range: tuple[float, float]
) -> dict[str, Any]:
    """Validate one raw record of ``task`` ("ir" or "sts"); raises :class:`InvalidRecord`."""
    return validate_ir(raw) if task == "ir" else validate_sts(raw, score_range)


def to_table(task: str, records: list[dict[str, Any]]) -> pa.Table:
    """Cleaned records (with ``id`` and ``source`` set) as a table of the task's schema."""
    return pa.Table.from_pylist(records, schema=SCHEMAS[task])
