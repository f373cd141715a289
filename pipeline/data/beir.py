"""The BEIR folder layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), read as plain mappings.

Used by the evaluation (ids and graded qrels) and by the BEIR training reader. Local paths or URIs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline import storage


@dataclass(frozen=True)
class BeirSplit:
    """One split of a BEIR dataset: corpus id -> (title, text), query id -> text, qrels."""

    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance grade}

    def document_text(self, doc_id: str) -> str:
        """A document as the field encodes it: ``title + " " + text`` (just the text without a title)."""
        title, text = self.corpus[doc_id]
        return f"{title} {text}" if title else text


def _jsonl_lines(path: str):
    for number, line in enumerate(storage.read_bytes(path).decode("utf-8").splitlines(), start=1):
        if line.strip():
            yield number, json.loads(line)


def load_corpus(folder: str) -> dict[str, tuple[str, str]]:
    """``corpus.jsonl`` -> {doc id: (title, text)}."""
    return {
        str(row["_id"]): (row.get("title") or "", row.get("text") or "")
        for _, row in _jsonl_lines(storage.join(folder, "corpus.jsonl"))
    }


def load_queries(folder: str) -> dict[str, str]:
    """``queries.jsonl`` -> {query id: text}."""
    return {
        str(row["_id"]): row["text"]
        for _, row in _jsonl_lines(storage.join(folder, "queries.jsonl"))
    }


def load_qrels(folder: str, split: str) -> dict[str, dict[str, int]]:
    """``qrels/<split>.tsv`` (header ``query-id corpus-id score``, CRLF tolerated) -> nested mapping."""
    qrels: dict[str, dict[str, int]] = {}
    text = storage.read_bytes(storage.join(folder, "qrels", f"{split}.tsv")).decode("utf-8")
    for line in text.splitlines()[1:]:
        if not line.strip():
            continue
        query_id, doc_id, score = line.strip().split("\t")
        qrels.setdefault(query_id, {})[doc_id] = int(float(score))
    return qrels


def load_split(folder: str, split: str) -> BeirSplit:
    """Corpus, the queries that have qrels in ``split``, and those qrels."""
    qrels = load_qrels(folder, split)
    queries = load_queries(folder)
    return BeirSplit(
        corpus=load_corpus(folder),
        queries={qid: queries[qid] for qid in qrels if qid in queries},
        qrels=qrels,
    )
