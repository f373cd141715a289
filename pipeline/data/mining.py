"""Hard-negative mining for IR records, and the seeded IR dev slice.

For every record without negatives: retrieve the top ``hi`` documents for its query, keep those at
1-based ranks ``lo..hi`` of the retriever's own ranking, drop the record's known positives (by doc id
and by exact text), optionally drop likely false negatives (dense score within ``margin`` of the
weakest positive's), and sample ``num_negatives`` of what is left. The sample is drawn with a
generator seeded by (seed, record id), so it does not depend on record order or batching; the
chosen negatives keep their rank order (hardest first).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.mining_retrieval import Retriever, TextEncoder

Qrels = Mapping[str, Mapping[str, int]]


@dataclass
class MiningStats:
    """What one call of ``mine_negatives`` did; ``to_dict`` is what ``stats.json`` holds."""

    records: int = 0
    passed_through: int = 0  # records that already had negatives
    mined: int = 0
    short: int = 0  # mined records whose window held fewer than num_negatives candidates
    mined_negatives: int = 0
    negatives_histogram: dict[int, int] = field(default_factory=dict)  # negatives -> records
    positives_in_window: int = 0  # window candidates dropped as known positives
    margin_dropped: int = 0  # window candidates dropped by the false-negative filter
    qrels_positive_negatives: int | None = None  # mined negatives the qrels mark relevant
    seconds: float = 0.0

    @property
    def qrels_positive_fraction(self) -> float | None:
        """Mined negatives that the qrels mark relevant / mined negatives (None without qrels)."""
        if self.qrels_positive_negatives is None:
            return None
        return self.qrels_positive_negatives / max(self.mined_negatives, 1)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["negatives_histogram"] = {
            str(k): v for k, v in sorted(self.negatives_histogram.items())
        }
        out["qrels_positive_fraction"] = self.qrels_positive_fraction
        return out


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from a hash of ``parts`` (same on every machine and Python process)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def record_keys(records: pa.Table) -> list[str]:
    """Each record's identity: its ``id`` when set, else its query text."""
    queries = records.column("query").to_pylist()
    if "id" not in records.column_names:
        return queries
    return [rid or query for rid, query in zip(records.column("id").to_pylist(), queries)]


def cap_given(
    records: pa.Table, *, max_positives: int | None, max_negatives: int, seed: int
) -> tuple[pa.Table, dict[str, int]]:
    """Records that carry more positives than ``max_positives`` (None: no cap) or more negatives than
    ``max_negatives`` (a TREC-QA question's wrong answers) keep a sample of that many, in their own
    order, drawn with a generator seeded by (seed, column, record id); ``positive_ids`` follow their
    positives. Cap after mining, so that no dropped positive can be mined as a negative. Returns the
    table (same schema and rows) and how many records each column cut."""
    keys = record_keys(records)
    columns = {name: records.column(name).to_pylist() for name in records.column_names}
    cut = {"positives": 0, "negatives": 0}
    for column, cap in (("positives", max_positives), ("negatives", max_negatives)):
        for row, texts in enumerate(columns[column]):
            if cap is None or len(texts) <= cap:
                continue
            rng = np.random.default_rng(_stable_int(seed, column, keys[row]))
            kept = np.sort(rng.choice(len(texts), cap, replace=False)).tolist()
            follow = ("positives", "positive_ids") if column == "positives" else (column,)
            for name in follow:
                if columns.get(name) and columns[name][row]:
                    columns[name][row] = [columns[name][row][i] for i in kept]
            cut[column] += 1
    if any(cut.values()):
        records = pa.Table.from_pydict(columns, schema=records.schema)
    return records, cut


def split_dev_queries(records: pa.Table, n_dev: int, seed: int) -> tuple[pa.Table, pa.Table]:
    """Cut a fixed dev slice of ``n_dev`` queries: ``(train records, dev records)``, disjoint.

    The queries with the ``n_dev`` smallest hashes of (seed, query id) form the slice, so it depends
    only on the seed and the set of ids (not their order); rows sharing an id stay together.
    """
    keys = record_keys(records)
    unique = set(keys)
    if n_dev >= len(unique):
        raise ValueError(
            f"dev slice of {n_dev} queries leaves no training queries ({len(unique)} in the "
            "source): lower mining.dev_queries"
        )
    chosen = set(sorted(unique, key=lambda key: (_stable_int(seed, "ir-dev", key), key))[:n_dev])
    in_dev = pa.array([key in chosen for key in keys])
    return records.filter(pc.invert(in_dev)), records.filter(in_dev)


def dev_slice(dev_records: pa.Table, *, source: str, source_path: str, qrels: Qrels) -> dict:
    """The ``ir_dev.json`` document evaluation reads: the dev queries and their graded qrels."""
    queries = dict(zip(record_keys(dev_records), dev_records.column("query").to_pylist()))
    missing = [qid for qid in queries if qid not in qrels]
    if missing:
        raise ValueError(f"dev queries without qrels in {source_path}: {missing[:5]}")
    return {
        "source": source,
        "source_path": source_path,
        "queries": queries,
        "qrels": {qid: dict(qrels[qid]) for qid in queries},
    }


def _margin_keep(
    queries: Sequence[str],
    positives: Sequence[Sequence[str]],
    candidates: Sequence[list[int]],
    corpus_texts: Sequence[str],
    encoder: TextEncoder,
    *,
    margin: float,
    max_length_query: int,
    max_length_passage: int,
    instruction: str,
) -> list[list[int]]:
    """Per record, the candidates whose dense score is at most (weakest positive's score - margin).

    Queries, positives and candidate documents are each encoded once (unique texts only)."""
    q_emb = encoder.encode(list(queries), max_length=max_length_query, instruction=instruction)
    pos_texts = sorted({text for texts in positives for text in texts})
    pos_emb = encoder.encode(pos_texts, max_length=max_length_passage)
    pos_row = {text: row for row, text in enumerate(pos_texts)}
    doc_ids = sorted({doc for cands in candidates for doc in cands})
    doc_emb = encoder.encode([corpus_texts[d] for d in doc_ids], max_length=max_length_passage)
    doc_row = {doc: row for row, doc in enumerate(doc_ids)}
    kept = []
    for q, texts, cands in zip(q_emb, positives, candidates):
        threshold = min(float(pos_emb[pos_row[t]] @ q) for t in texts) - margin
        kept.append([d for d in cands if float(doc_emb[doc_row[d]] @ q) <= threshold])
    return kept


def mine_negatives(
    records: pa.Table,
    corpus_ids: Sequence[str],
    corpus_texts: Sequence[str],
    *,
    retriever: Retriever,
    num_negatives: int,
    rank_window: tuple[int, int],
    margin: float | None = None,
    seed: int,
    encoder: TextEncoder | None = None,
    qrels: Qrels | None = None,
    max_length_query: int = 64,
    max_length_passage: int = 256,
    instruction: str = "",
) -> tuple[pa.Table, MiningStats]:
    """Fill the ``negatives`` of records that have none; other records pass through unchanged.

    Args:
        records: IR records (``query``, ``positives``, ``negatives``, optional ``id`` and
            ``positive_ids``); the returned table has the same schema and row order.
        corpus_ids, corpus_texts: the document pool the retriever indexes, row-aligned.
        rank_window: 1-based inclusive ranks ``(lo, hi)`` of the retriever's ranking to sample from.
        margin: when set, drop candidates scoring above (weakest positive's score - margin) under
            ``encoder`` (cosine of L2-normalised embeddings); needs ``encoder``.
        qrels: relevance judgements (query id -> doc id -> grade), used only to count mined
            negatives that they mark relevant (the stats' ``qrels_positive_fraction``).
        max_length_query, max_length_passage, instruction: encoder settings of the margin filter.
    """
    lo, hi = rank_window
    if not 1 <= lo <= hi:
        raise ValueError(f"rank_window={rank_window}: need 1 <= low <= high")
    if margin is not None and encoder is None:
        raise ValueError("a false-negative margin needs an encoder (mining.margin)")
    start = time.perf_counter()
    stats = MiningStats(
        records=records.num_rows, qrels_positive_negatives=None if qrels is None else 0
    )
    keys = record_keys(records)
    queries = records.column("query").to_pylist()
    positives = records.column("positives").to_pylist()
    negatives = records.column("negatives").to_pylist()
    positive_ids = (
        records.column("positive_ids").to_pylist()
        if "positive_ids" in records.column_names
        else [None] * records.num_rows
    )
    todo = [row for row, negs in enumerate(negatives) if not negs]
    stats.passed_through = records.num_rows - len(todo)
    stats.mined = len(todo)

    rankings = retriever.search([queries[row] for row in todo], hi)
    candidates = []
    for row, ranking in zip(todo, rankings):
        known_ids = set(positive_ids[row] or ())
        known_texts = {text.strip() for text in positives[row]}
        seen: set[str] = set()
        window = []
        for doc in ranking[lo - 1 : hi].tolist():
            text = corpus_texts[doc].strip()
            if corpus_ids[doc] in known_ids or text in known_texts:
                stats.positives_in_window += 1
            elif text not in seen:
                seen.add(text)
                window.append(doc)
        candidates.append(window)

    if margin is not None:
        kept = _margin_keep(
            [queries[row] for row in todo],
            [positives[row] for row in todo],
            candidates,
            corpus_texts,
            encoder,
            margin=margin,
            max_length_query=max_length_query,
            max_length_passage=max_length_passage,
            instruction=instruction,
        )
        stats.margin_dropped = sum(len(c) - len(k) for c, k in zip(candidates, kept))
        candidates = kept

    histogram: Counter[int] = Counter()
    for row, window in zip(todo, candidates):
        rng = np.random.default_rng(_stable_int(seed, "negatives", keys[row]))
        take = min(num_negatives, len(window))
        chosen = [window[i] for i in np.sort(rng.choice(len(window), take, replace=False))]
        negatives[row] = [corpus_texts[doc].strip() for doc in chosen]
        if stats.qrels_positive_negatives is not None:
            judged = qrels.get(keys[row], {})
            stats.qrels_positive_negatives += sum(judged.get(corpus_ids[d], 0) > 0 for d in chosen)
        stats.short += take < num_negatives
        stats.mined_negatives += take
        histogram[take] += 1
    stats.negatives_histogram = dict(histogram)

    column = records.schema.get_field_index("negatives")
    field_type = records.schema.field("negatives").type
    table = records.set_column(
        column, records.schema.field("negatives"), pa.array(negatives, type=field_type)
    )
    stats.seconds = time.perf_counter() - start
    return table, stats
