"""Readers: one source (a :class:`SourceConfig`) -> records of the project's own format + quarantine.

What ``path`` names per format (relative to the data root unless absolute or a URI):

==========  ====  ====================================================================================
format      task  path
==========  ====  ====================================================================================
own         both  a ``.jsonl`` / ``.parquet`` file, or a folder of them (own format, DESIGN.md)
stsb        sts   an original STS-B file (``stsbenchmark/sts-train.csv``): tab-separated, fields 4-6
stsb_csv    sts   a 3-column CSV without header: sentence1, sentence2, score (``stsb-multi-mt-en``)
beir        ir    a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv; positives from qrels
trecqa      ir    a CSV with header qtext,label,atext; one record per question that has a correct
                  answer (label 1: positives, label 0: hard negatives)
snli        ir    a SentEval SNLI folder: s1/s2/labels.<split>; one record per premise that has an
                  entailment (positives) and a contradiction (hard negatives)
hf          both  anything ``datasets.load_dataset`` opens: a local folder, or a Hub id (``hf://`` prefix
                  optional); columns mapped with ``hf_columns`` (own field -> dataset column)
==========  ====  ====================================================================================

STS scores are given on ``score_range`` (default :data:`DEFAULT_SCORE_RANGE`, the STS-B scale 0-5)
and normalised to [0, 1]. Every bad record is returned as a :class:`QuarantinedRecord` with its file and
1-based line; text files are read as one record per line. ``read`` counts the records a reader formed
plus the input lines it could not use, so ``read == kept + len(quarantined)`` always holds. Rows a
format leaves out by design (SNLI neutral pairs, BEIR qrels with grade 0, TREC-QA questions without
a correct answer) are counted in ``skipped``.

Record ids: the source's own where it has one (own-format ``id``, BEIR query id, STS-B
``genre/file/year/id``), else ``<file name>:<line>``; a repeated id is quarantined. The ``source``
column is always the source's configured name (an own-format ``source`` field is ignored).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline import storage
from pipeline.config import SourceConfig
from pipeline.data.beir import BeirSplit
from pipeline.data.quarantine import QuarantinedRecord, quarantined
from pipeline.data.records import (
    BAD_ENCODING,
    CORRUPT_FILE,
    DUPLICATE_ID,
    EMPTY_TEXT,
    FIELDS,
    MALFORMED_LINE,
    MISSING_FIELD,
    UNKNOWN_ID,
    WRONG_TYPE,
    InvalidRecord,
    to_table,
    validate_record,
)

DEFAULT_SCORE_RANGE = (0.0, 5.0)
FORMAT_TASKS = {
    "own": ("ir", "sts"),
    "stsb": ("sts",),
    "stsb_csv": ("sts",),
    "beir": ("ir",),
    "trecqa": ("ir",),
    "snli": ("ir",),
    "hf": ("ir", "sts"),
}
OWN_SUFFIXES = (".jsonl", ".parquet")
SNLI_LABELS = ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class Candidate:
    """A raw record a reader formed, not yet validated; ``raw`` is its source text if any."""

    file: str
    line: int
    fields: dict[str, Any]
    raw: str = ""


Item = Candidate | QuarantinedRecord


@dataclass
class ReadResult:
    """What one source gave: kept records (the task's schema), bad records, counts, input files."""

    table: pa.Table
    quarantined: list[QuarantinedRecord]
    read: int
    kept: int
    input_files: list[str]
    skipped: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- paths and files


def resolve_path(path: str, data_root: str) -> str:
    """Absolute paths and URIs unchanged; anything else under ``data_root``."""
    if "://" in path or os.path.isabs(path):
        return path
    return storage.join(data_root, path)


def source_path(source: SourceConfig, data_root: str) -> str:
    """Where ``source`` is read from; for format "hf" a local path when one exists, else ``hf://<id>``."""
    if source.format != "hf":
        return resolve_path(source.path, data_root)
    if source.path.startswith("hf://"):
        return source.path
    local = resolve_path(source.path, data_root)
    return local if storage.exists(local) else f"hf://{source.path}"


def _list_files(folder: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """The files under ``folder`` (recursive, sorted, hidden ones left out) ending in ``suffixes``."""
    fs, inner = storage.filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    names = sorted(
        info.path[len(inner) :].lstrip("/")
        for info in infos
        if info.type == pafs.FileType.File and info.path.endswith(suffixes or ("",))
    )
    visible = [name for name in names if not any(p.startswith(".") for p in name.split("/"))]
    return [storage.join(folder, name) for name in visible]


def _own_files(path: str) -> list[str]:
    fs, inner = storage.filesystem(path)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        return _list_files(path, OWN_SUFFIXES)
    return [path]


def _beir_files(path: str, split: str) -> dict[str, str]:
    return {
        "corpus": storage.join(path, "corpus.jsonl"),
        "queries": storage.join(path, "queries.jsonl"),
        "qrels": storage.join(path, "qrels", f"{split}.tsv"),
    }


def _snli_files(path: str, split: str) -> dict[str, str]:
    return {part: storage.join(path, f"{part}.{split}") for part in ("s1", "s2", "labels")}


def source_files(source: SourceConfig, data_root: str) -> list[str]:
    """The input files ``source`` reads (none for a Hub dataset); raises if one is missing."""
    path = source_path(source, data_root)
    if source.format == "hf":
        files = [] if path.startswith("hf://") else _list_files(path)
    elif source.format == "own":
        files = _own_files(path) if storage.exists(path) else [path]
    elif source.format == "beir":
        files = list(_beir_files(path, source.split).values())
    elif source.format == "snli":
        files = list(_snli_files(path, source.split).values())
    else:
        files = [path]
    missing = [file for file in files if not storage.exists(file)]
    if missing or (source.format == "own" and not files):
        raise FileNotFoundError(
            f"source {source.name!r} ({source.format}): input not found: {missing or path}"
        )
    return files


# ------------------------------------------------------------------------------------ line helpers


def _lines(path: str) -> Iterator[tuple[int, str | None, bytes]]:
    """(1-based number, text or None when not UTF-8, raw bytes) per line; CR/LF and a BOM removed."""
    chunks = storage.read_bytes(path).split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    for number, chunk in enumerate(chunks, start=1):
        raw = chunk.rstrip(b"\r")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None, raw
            continue
        yield number, (text.removeprefix("\ufeff") if number == 1 else text), raw


def _bad_encoding(path: str, number: int, raw: bytes) -> QuarantinedRecord:
    return quarantined(
        path, number, BAD_ENCODING, "bytes are not UTF-8", raw.decode("utf-8", "replace")
    )


def _csv_row(text: str) -> list[str] | None:
    try:
        return next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration):
        return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _json_lines(path: str) -> Iterator[Item]:
    """One Candidate per JSON object line; bad lines quarantined (blank lines skipped)."""
    for number, text, raw in _lines(path):
        if text is None:
            yield _bad_encoding(path, number, raw)
        elif text.strip():
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield quarantined(path, number, MALFORMED_LINE, f"not valid JSON: {exc}", text)
                continue
            if isinstance(obj, dict):
                yield Candidate(path, number, obj, text)
            else:
                yield quarantined(path, number, MALFORMED_LINE, "not a JSON object", text)


# ------------------------------------------------------------------------------------- the readers


def _read_own(source: SourceConfig, path: str, skipped: Counter) -> Iterator[Item]:
    for file in _own_files(path):
        if not file.endswith(".parquet"):
            yield from _json_lines(file)
            continue
        try:
            rows = storage.read_parquet(file).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            yield quarantined(file, 0, CORRUPT_FILE, f"cannot read Parquet: {exc}")
            continue
        for number, row in enumerate(rows, start=1):
            yield Candidate(file, number, row)


def _read_stsb(source: SourceConfig, path: str, skipped: Counter) -> Iterator[Item]:
    for number, text, raw in _lines(path):
        if text is None:
            yield _bad_encoding(path, number, raw)
            continue
        if not text.strip():
            continue
        parts = text.split("\t")
        if len(parts) < 7:
            detail = f"{len(parts)} tab-separated fields, expected at least 7"
            yield quarantined(path, number, MALFORMED_LINE, detail, text)
            continue
        score = _number(parts[4])
        if score is None:
            yield quarantined(path, number, WRONG_TYPE, f"score {parts[4]!r} is not a number", text)
            continue
        fields = {"id": "/".join(parts[:4]), "sentence1": parts[5], "sentence2": parts[6]}
        yield Candidate(path, number, {**fields, "score": score}, text)


def _read_stsb_csv(source: SourceConfig, path: str, skipped: Counter) -> Iterator[Item]:
    for number, text, raw in _lines(path):
        if text is None:
            yield _bad_encoding(path, number, raw)
            continue
        if not text.strip():
            continue
        row = _csv_row(text)
        if row is None or len(row) != 3:
            detail = "unbalanced quotes" if row is None else f"{len(row)} columns, expected 3"
            yield quarantined(path, number, MALFORMED_LINE, detail, text)
            continue
        score = _number(row[2])
        if score is None:
            yield quarantined(path, number, WRONG_TYPE, f"score {row[2]!r} is not a number", text)
            continue
        yield Candidate(path, number, {"sentence1": row[0], "sentence2": row[1], "score": score})


def _beir_table(
    path: str, fields: tuple[str, ...], out: dict[str, tuple[int, dict]]
) -> Iterator[QuarantinedRecord]:
    """Fill ``out`` (id -> (line, row)) from a BEIR JSONL file; yield its bad lines."""
    for item in _json_lines(path):
        if isinstance(item, QuarantinedRecord):
            yield item
            continue
        row_id, row = item.fields.get("_id"), item.fields
        bad_type = next((f for f in fields if not isinstance(row.get(f, ""), str)), None)
        if row_id is None:
            yield quarantined(path, item.line, MISSING_FIELD, "no '_id'", item.raw)
        elif bad_type is not None:
            yield quarantined(
                path, item.line, WRONG_TYPE, f"{bad_type!r} is not a string", item.raw
            )
        elif str(row_id) in out:
            detail = f"_id {row_id!r} first seen at line {out[str(row_id)][0]}"
            yield quarantined(path, item.line, DUPLICATE_ID, detail, item.raw)
        else:
            out[str(row_id)] = (item.line, row)


def _read_beir(source: SourceConfig, path: str, skipped: Counter) -> Iterator[Item]:
    files = _beir_files(path, source.split)
    docs: dict[str, tuple[int, dict]] = {}
    queries: dict[str, tuple[int, dict]] = {}
    yield from _beir_table(files["corpus"], ("title", "text"), docs)
    yield from _beir_table(files["queries"], ("text",), queries)
    corpus = BeirSplit(
        corpus={
            doc_id: (row.get("title") or "", row.get("text") or "")
            for doc_id, (_, row) in docs.items()
        },
        queries={},
        qrels={},
    )
    positives: dict[str, list[str]] = {}  # query id -> doc ids, in qrels order
    qrels = files["qrels"]
    for number, text, raw in itertools.islice(_lines(qrels), 1, None):  # line 1 is the header
        if text is None:
            yield _bad_encoding(qrels, number, raw)
            continue
        if not text.strip():
            continue
        parts = text.strip().split("\t")
        grade = _number(parts[2]) if len(parts) == 3 else None
        if len(parts) != 3:
            yield quarantined(
                qrels, number, MALFORMED_LINE, f"{len(parts)} fields, expected 3", text
            )
        elif grade is None:
            yield quarantined(
                qrels, number, WRONG_TYPE, f"score {parts[2]!r} is not a number", text
            )
        elif grade <= 0:
            skipped["non_relevant_qrels"] += 1
        elif parts[0] not in queries:
            yield quarantined(qrels, number, UNKNOWN_ID, f"query {parts[0]!r} not in queries", text)
        elif parts[1] not in docs:
            positives.setdefault(parts[0], [])
            yield quarantined(
                qrels, number, UNKNOWN_ID, f"document {parts[1]!r} not in corpus", text
            )
        elif parts[1] in positives.get(parts[0], []):
            yield quarantined(qrels, number, DUPLICATE_ID, "repeated (query, document) pair", text)
        else:
            positives.setdefault(parts[0], []).append(parts[1])
    for query_id, doc_ids in positives.items():
        line, row = queries[query_id]
        fields = {
            "id": query_id,
            "query": row.get("text"),
            "positives": [corpus.document_text(doc_id) for doc_id in doc_ids],
            "positive_ids": doc_ids,
        }
        yield Candidate(files["queries"], line, fields)


def _read_trecqa(source: SourceConfig, path: str, skipped: Counter) -> Iterator[Item]:
    lines = ((n, t, r) for n, t, r in _lines(path) if t is None or t.strip())
    _, header_text, _ = next(lines, (0, "", b""))
    header = _csv_row(header_text or "") or []
    if not {"qtext", "label", "atext"} <= set(header):
        raise ValueError(f"{path}: header {header} lacks the columns qtext,label,atext")
    column = {name: header.index(name) for name in ("qtext", "label", "atext")}
    questions: dict[str, dict[str, Any]] = {}
    for number, text, raw in lines:
        if text is None:
            yield _bad_encoding(path, number, raw)
            continue
        row = _csv_row(text)
        if row is None or len(row) != len(header):
            yield quarantined(path, number, MALFORMED_LINE, f"expected {len(header)} columns", text)
            continue
        question, label, answer = (
            row[column[name]].strip() for name in ("qtext", "label", "atext")
        )
        if label not in ("0", "1"):
            yield quarantined(path, number, WRONG_TYPE, f"label {label!r} is not 0 or 1", text)
        elif not question or not answer:
            yield quarantined(path, number, EMPTY_TEXT, "empty question or answer", text)
        else:
            group = questions.setdefault(question, {"line": number, "1": [], "0": []})
            group[label].append(answer)
    for question, group in questions.items():
        if not group["1"]:
            skipped["questions_without_answer"] += 1
            continue
        fields = {"query": question, "positives": group["1"], "negatives": group["0"]}
        yield Candidate(path, group["line"], fields)


def _read_snli(source: SourceConfig, path: str, skipped: Counter) -> Iterator[Item]:
    files = _snli_files(path, source.split)
    columns = {part: list(_lines(file)) for part, file in files.items()}
    rows = min(len(lines) for lines in columns.values())
    for part, lines in columns.items():
        for number, text, _ in lines[rows:]:
            detail = f"no aligned line in the other SNLI files (they have {rows} lines)"
            yield quarantined(files[part], number, MALFORMED_LINE, detail, text or "")
    premises: dict[str, dict[str, Any]] = {}
    for index in range(rows):
        line = {part: lines[index] for part, lines in columns.items()}
        bad = next((part for part, (_, text, _) in line.items() if text is None), None)
        number = line["s1"][0]
        if bad is not None:
            yield _bad_encoding(files[bad], number, line[bad][2])
            continue
        premise, hypothesis, label = (line[part][1].strip() for part in ("s1", "s2", "labels"))
        empty = next((p for p, t in (("s1", premise), ("s2", hypothesis)) if not t), None)
        if label not in SNLI_LABELS:
            detail = f"label {label!r} is not one of {SNLI_LABELS}"
            yield quarantined(files["labels"], number, WRONG_TYPE, detail, label)
        elif empty is not None:
            yield quarantined(files[empty], number, EMPTY_TEXT, f"empty {empty} line")
        elif label == "neutral":
            skipped["neutral_pairs"] += 1
        else:
            group = premises.setdefault(
                premise, {"line": number, "entailment": [], "contradiction": []}
            )
            group[label].append(hypothesis)
    for premise, group in premises.items():
        if not (group["entailment"] and group["contradiction"]):
            skipped["premises_without_triplet"] += 1
            continue
        fields = {
            "query": premise,
            "positives": group["entailment"],
            "negatives": group["contradiction"],
        }
        yield Candidate(files["s1"], group["line"], fields)


def _read_hf(source: SourceConfig, path: str, skipped: Counter) -> Iterator[Item]:
    import datasets  # only users of this format need it loaded

    dataset = datasets.load_dataset(path.removeprefix("hf://"), split=source.split)
    unknown = sorted(set(source.hf_columns) - set(FIELDS[source.task]))
    if unknown:
        raise ValueError(
            f"source {source.name!r}: hf_columns keys {unknown} are not {source.task} fields"
        )
    mapping = {f: source.hf_columns.get(f, f) for f in FIELDS[source.task]}
    absent = sorted(
        c for f, c in mapping.items() if f in source.hf_columns and c not in dataset.column_names
    )
    if absent:
        raise ValueError(
            f"source {source.name!r}: columns {absent} not in the dataset (it has {dataset.column_names})"
        )
    mapping = {f: c for f, c in mapping.items() if c in dataset.column_names}
    for number, row in enumerate(dataset.select_columns(list(set(mapping.values()))), start=1):
        fields = {f: row[c] for f, c in mapping.items()}
        for key in ("positives", "negatives"):  # a single-text column stands for a one-item list
            if isinstance(fields.get(key), str):
                fields[key] = [fields[key]]
        yield Candidate(path, number, fields)


READERS: dict[str, Callable[[SourceConfig, str, Counter], Iterator[Item]]] = {
    "own": _read_own,
    "stsb": _read_stsb,
    "stsb_csv": _read_stsb_csv,
    "beir": _read_beir,
    "trecqa": _read_trecqa,
    "snli": _read_snli,
    "hf": _read_hf,
}


# ------------------------------------------------------------------------------------ the collector


def check_source(source: SourceConfig) -> tuple[float, float]:
    """Fail early on a format/task mismatch or a bad score range; returns the score range used."""
    if source.task not in FORMAT_TASKS[source.format]:
        raise ValueError(
            f"source {source.name!r}: format {source.format!r} gives "
            f"{'/'.join(FORMAT_TASKS[source.format])} records, not task {source.task!r}"
        )
    low, high = source.score_range or DEFAULT_SCORE_RANGE
    if not low < high:
        raise ValueError(
            f"source {source.name!r}: score_range {source.score_range} needs low < high"
        )
    return low, high


def _raw(item: Candidate) -> str:
    return item.raw or json.dumps(item.fields, ensure_ascii=False, default=str)


def row_slice(skip: int, limit: int | None) -> slice:
    """The rows ``skip`` and ``limit`` keep: drop the first ``skip``, keep the next ``limit``."""
    return slice(skip, None if limit is None else skip + limit)


def read_source(source: SourceConfig, data_root: str) -> ReadResult:
    """Read one source into its task's schema; bad records quarantined, never dropped silently.

    ``skip`` drops the first N items, then ``limit`` keeps the next N (records and bad input lines
    alike), so two sources can split one file: ``limit: N`` and ``skip: N``. ``skipped`` counts what
    the reader left out by design while reading the slice (the two slices' counts add up to the file's).
    """
    score_range = check_source(source)
    input_files = source_files(source, data_root)
    skipped: Counter = Counter()
    reader = READERS[source.format](source, source_path(source, data_root), skipped)
    deque(itertools.islice(reader, source.skip), maxlen=0)  # the rows before the slice
    before_slice = Counter(skipped)
    items = itertools.islice(reader, source.limit)
    kept: list[dict[str, Any]] = []
    bad: list[QuarantinedRecord] = []
    seen: dict[str, str] = {}  # record id -> file:line where it was first kept
    for item in items:
        if isinstance(item, QuarantinedRecord):
            bad.append(item)
            continue
        try:
            record = validate_record(source.task, item.fields, score_range)
        except InvalidRecord as exc:
            bad.append(quarantined(item.file, item.line, exc.reason, exc.detail, _raw(item)))
            continue
        record_id = record["id"] or f"{os.path.basename(item.file)}:{item.line}"
        if record_id in seen:
            detail = f"id {record_id!r} first seen at {seen[record_id]}"
            bad.append(quarantined(item.file, item.line, DUPLICATE_ID, detail, _raw(item)))
            continue
        seen[record_id] = f"{item.file}:{item.line}"
        kept.append({**record, "id": record_id, "source": source.name})
    return ReadResult(
        table=to_table(source.task, kept),
        quarantined=bad,
        read=len(kept) + len(bad),
        kept=len(kept),
        input_files=input_files,
        skipped=dict(skipped - before_slice),
    )
