"""Bad records: where they came from and why, the quarantine file, and the stop above a threshold.

The quarantine file is JSONL, one bad record per line:
``{"source", "file", "line", "reason", "detail", "raw"}`` with ``line`` 1-based (0 = the whole file).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline import storage

RAW_CHARS = 500  # how much of the offending text a quarantine entry keeps


class BadDataError(RuntimeError):
    """Too many bad records in a source: the message names the worst one and the quarantine file."""


@dataclass(frozen=True)
class QuarantinedRecord:
    """One record that was not kept: its file, 1-based line (0 = whole file), reason and detail."""

    file: str
    line: int
    reason: str
    detail: str
    raw: str = ""

    @property
    def location(self) -> str:
        """``file:line``, as editors and the error messages print it."""
        return f"{self.file}:{self.line}"


def quarantined(file: str, line: int, reason: str, detail: str, raw: str = "") -> QuarantinedRecord:
    """A quarantine entry, with the raw text cut to :data:`RAW_CHARS` characters."""
    return QuarantinedRecord(file, line, reason, detail, raw[:RAW_CHARS])


def reason_counts(records: Iterable[QuarantinedRecord]) -> dict[str, int]:
    """Bad records per reason, most frequent first."""
    return dict(Counter(record.reason for record in records).most_common())


def write_quarantine(path: str, by_source: Mapping[str, list[QuarantinedRecord]]) -> None:
    """Write every bad record of every source to one JSONL file (written even when empty)."""
    lines = [
        json.dumps({"source": source, **asdict(record)}, ensure_ascii=False)
        for source, records in by_source.items()
        for record in records
    ]
    storage.write_bytes(path, "".join(f"{line}\n" for line in lines).encode("utf-8"))


def read_quarantine(path: str) -> list[dict[str, Any]]:
    """The entries of a quarantine file, in order."""
    text = storage.read_bytes(path).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line]


def bad_fraction(read: int, quarantined_count: int) -> float:
    """Quarantined / read (1.0 for a source that yielded nothing at all)."""
    return quarantined_count / read if read else 1.0


def check_bad_fraction(
    counts: Mapping[str, Mapping[str, Any]], max_bad_fraction: float, quarantine_path: str
) -> None:
    """Raise :class:`BadDataError` when any source's quarantined/read exceeds the threshold.

    ``counts`` maps a source name to its manifest entry (``read``, ``quarantined``, ``reasons``).
    """
    fractions = {
        name: bad_fraction(entry["read"], entry["quarantined"]) for name, entry in counts.items()
    }
    over = {name: frac for name, frac in fractions.items() if frac > max_bad_fraction}
    if not over:
        return
    worst = max(over, key=over.__getitem__)
    entry = counts[worst]
    others = sorted(set(over) - {worst})
    what = (
        f"{entry['quarantined']} of {entry['read']} records quarantined"
        if entry["read"]
        else "no records at all"
    )
    raise BadDataError(
        f"source {worst!r}: {what} (bad fraction {over[worst]:.2%}, above "
        f"data.max_bad_fraction={max_bad_fraction}); reasons {dict(entry['reasons'])}"
        + (f"; also over the threshold: {others}" if others else "")
        + f". Each bad record is listed with file:line in {quarantine_path}. "
        "Fix the data, or raise data.max_bad_fraction if these records are expected."
    )
