"""The benchmarks named in the config: load each, encode with the right task settings, score.

Formats (``EvalBenchmark.format``):
- ``stsb`` / ``stsb_csv`` / ``own`` (kind sts): STS pairs read by ``pipeline.data.readers`` (gold in [0, 1]).
- ``beir`` / ``own`` (kind ir): a BEIR folder; ``split`` names the qrels file.
- ``ir_dev`` (kind ir): the held-out slice written by mining, ``<run dir>/mined/ir_dev.json`` unless
  ``path`` says otherwise, searched against the full corpus of its ``source_path``. Skipped with a printed
  note when the file does not exist yet.
- ``trecqa`` / ``snli`` (kind ir): question -> answer sentences (TREC-QA), premise -> entailed
  hypotheses (SNLI; contradictions are the hard negatives), each searched against every candidate text
  of the file.
- ``snli`` (kind sts): premise-hypothesis pairs, gold 1 for entailment and 0 for contradiction, so the
  Spearman correlation measures how well similarity separates the two.
``skip`` drops the first N, then ``limit`` keeps the next N pairs (STS), queries (IR; the corpus stays
whole) or, for ``trecqa`` / ``snli``, questions / premises (their candidates form the corpus).

Queries and both sides of STS pairs get their task's instruction; documents (``title + " " + text``)
get none. Each benchmark's results hold its scores (x100) and the geometry of its embeddings (raw).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline import storage
from pipeline.config import (
    EvalBenchmark,
    ModelConfig,
    SourceConfig,
    TextSettings,
)
from pipeline.data.beir import BeirSplit, load_corpus, load_split
from pipeline.data.mining_retrieval import BM25Retriever
from pipeline.data.readers import read_source, resolve_path, row_slice
from pipeline.eval.geometry import geometry_metrics
from pipeline.eval.ir import RunningTopK, build_run, mean_ir_metrics, per_query_ir_metrics
from pipeline.eval.sts import sts_scores
from pipeline.model.encoder import Encoder
from pipeline.progress import EncodeProgress

TOP_K = 100  # documents kept per query: enough for Recall@100 (MAP is over these)
STS_POSITIVE = 0.8  # normalised gold at or above which an STS pair counts as positive (alignment)
GEOMETRY_POINTS = 5000  # rows sampled for the pairwise geometry metrics
FORMATS = {
    "sts": ("stsb", "stsb_csv", "own", "snli"),
    "ir": ("beir", "own", "ir_dev", "trecqa", "snli"),
}
GROUPED = ("trecqa", "snli")  # formats read as query -> positives / negatives texts
MEMO_ROWS = 200_000  # embeddings one model's evaluation keeps for reuse (~300 MB at 384 dims)


@dataclass(frozen=True)
class StsData:
    sentence1: list[str]
    sentence2: list[str]
    gold: np.ndarray  # [N] in [0, 1]


@dataclass(frozen=True)
class IrData:
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    doc_ids: list[str]
    doc_texts: list[str]  # title + " " + text


class EmbeddingMemo:
    """An encoder whose ``encode`` embeds each distinct (text, max length, instruction) once: texts
    that repeat within a benchmark or across benchmarks (the IR dev slice's documents are SciFact
    corpus documents) are not encoded again. Up to ``max_rows`` embeddings are kept."""

    def __init__(self, encoder: Encoder, max_rows: int = MEMO_ROWS) -> None:
        self.encoder = encoder
        self.max_rows = max_rows
        self._rows: dict[tuple[int, str, str], np.ndarray] = {}
        self.encoded = 0  # texts actually put through the encoder
        self.progress: EncodeProgress | None = None  # told after each batch of an encode

    def encode(
        self, texts: Sequence[str], *, max_length: int, instruction: str = "", **kwargs
    ) -> np.ndarray:
        """``Encoder.encode``'s result for ``texts``, encoding only the texts not seen before."""
        keys = [(max_length, instruction, text) for text in texts]
        missing = list(dict.fromkeys(key for key in keys if key not in self._rows))
        fresh = {}
        if missing:
            embeddings = self.encoder.encode(
                [text for _, _, text in missing],
                max_length=max_length,
                instruction=instruction,
                progress=self.progress.update if self.progress else None,
                **kwargs,
            )
            fresh = dict(zip(missing, embeddings, strict=True))
            self.encoded += len(missing)
        if len(self._rows) + len(fresh) <= self.max_rows:
            self._rows.update(fresh)
        if not keys:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([fresh[key] if key in fresh else self._rows[key] for key in keys])


def _read(bench: EvalBenchmark, data_root: str, task: str):
    """The benchmark's records through the project's readers (bad lines reported, left out)."""
    source = SourceConfig(
        name=bench.name,
        task=task,
        format=bench.format,
        path=bench.path,
        split=bench.split,
        skip=bench.skip,
        limit=bench.limit,
    )
    result = read_source(source, data_root)
    if result.skipped:
        print(f"[eval] {bench.name}: left out by design: {result.skipped}")
    if result.quarantined:
        reasons = Counter(record.reason for record in result.quarantined)
        first = result.quarantined[0]
        print(
            f"[eval] {bench.name}: {len(result.quarantined)} records left out "
            f"({', '.join(f'{n} {reason}' for reason, n in reasons.items())}; first: "
            f"{first.location} {first.detail})"
        )
    return result.table


def load_sts(bench: EvalBenchmark, data_root: str) -> StsData:
    """STS pairs of an ``stsb`` / ``stsb_csv`` / ``own`` file, or SNLI pairs with gold 1 / 0."""
    if bench.format == "snli":
        return _pairs_from_groups(_read(bench, data_root, "ir"))
    table = _read(bench, data_root, "sts")
    return StsData(
        sentence1=table.column("sentence1").to_pylist(),
        sentence2=table.column("sentence2").to_pylist(),
        gold=np.asarray(table.column("score").to_pylist(), dtype=np.float64),
    )


def _pairs_from_groups(table) -> StsData:
    """(query, positive) pairs with gold 1 and (query, negative) pairs with gold 0."""
    first, second, gold = [], [], []
    for query, positives, negatives in zip(
        table.column("query").to_pylist(),
        table.column("positives").to_pylist(),
        table.column("negatives").to_pylist(),
    ):
        for texts, label in ((positives, 1.0), (negatives or [], 0.0)):
            first += [query] * len(texts)
            second += texts
            gold += [label] * len(texts)
    return StsData(sentence1=first, sentence2=second, gold=np.asarray(gold, dtype=np.float64))


def _retrieval_from_groups(table) -> IrData:
    """Every query searches all candidate texts of the file (each distinct text one document); its
    positives are relevant."""
    doc_ids: dict[str, str] = {}
    queries, qrels = {}, {}
    for row, (query, positives, negatives) in enumerate(
        zip(
            table.column("query").to_pylist(),
            table.column("positives").to_pylist(),
            table.column("negatives").to_pylist(),
        )
    ):
        for text in [*positives, *(negatives or [])]:
            doc_ids.setdefault(text, f"d{len(doc_ids)}")
        queries[f"q{row}"] = query
        qrels[f"q{row}"] = {doc_ids[text]: 1 for text in positives}
    return IrData(
        queries=queries, qrels=qrels, doc_ids=list(doc_ids.values()), doc_texts=list(doc_ids)
    )


def _ir_dev_file(bench: EvalBenchmark, data_root: str, run_dir: str) -> str:
    if bench.path:
        return resolve_path(bench.path, data_root)
    return storage.join(run_dir, "mined", "ir_dev.json")


def _load_beir_or_dev(bench: EvalBenchmark, data_root: str, run_dir: str) -> IrData | None:
    if bench.format == "ir_dev":
        path = _ir_dev_file(bench, data_root, run_dir)
        if not storage.exists(path):
            print(f"[eval] {bench.name}: skipped, {path} does not exist (run jobs.mine first)")
            return None
        dev = storage.read_json(path)
        folder = dev["source_path"]
        if not storage.exists(folder):
            folder = resolve_path(folder, data_root)
        split = BeirSplit(corpus=load_corpus(folder), queries=dev["queries"], qrels=dev["qrels"])
    else:
        split = load_split(resolve_path(bench.path, data_root), bench.split)
    kept = list(split.queries)[row_slice(bench.skip, bench.limit)]
    return IrData(
        queries={qid: split.queries[qid] for qid in kept},
        qrels={qid: {d: int(g) for d, g in split.qrels[qid].items()} for qid in kept},
        doc_ids=list(split.corpus),
        doc_texts=[split.document_text(doc_id) for doc_id in split.corpus],
    )


def load_ir(bench: EvalBenchmark, data_root: str, run_dir: str) -> IrData | None:
    """Queries, qrels and corpus of a BEIR folder, the IR dev slice (None: not mined yet) or a
    TREC-QA / SNLI file; cut to a BM25 pool when ``bench.pool`` is set."""
    if bench.format in GROUPED:
        data = _retrieval_from_groups(_read(bench, data_root, "ir"))
    else:
        data = _load_beir_or_dev(bench, data_root, run_dir)
    return bm25_pool(data, bench.pool) if data is not None and bench.pool else data


def bm25_pool(data: IrData, per_query: int) -> IrData:
    """``data`` with its corpus cut to every query's BM25 top ``per_query`` documents plus its
    relevant ones: a cheaper, re-ranking style search for frequent dev checks (the scores are
    higher than over the whole corpus; compare them only with each other)."""
    keep = {d for rel in data.qrels.values() for d in rel}
    hits = BM25Retriever(data.doc_texts).search(list(data.queries.values()), per_query)
    keep.update(data.doc_ids[int(row)] for rows in hits for row in rows)
    rows = [i for i, doc_id in enumerate(data.doc_ids) if doc_id in keep]
    return IrData(
        queries=data.queries,
        qrels=data.qrels,
        doc_ids=[data.doc_ids[i] for i in rows],
        doc_texts=[data.doc_texts[i] for i in rows],
    )


def evaluate_sts(
    encoder: Encoder | EmbeddingMemo,
    data: StsData,
    *,
    max_length: int,
    instruction: str = "",
    batch_size: int = 64,
    sort_by_length: bool = True,
) -> dict[str, float]:
    """Spearman / Pearson x100 plus the geometry of both sides' embeddings (positives: gold >= 0.8)."""
    kwargs = dict(
        max_length=max_length,
        instruction=instruction,
        batch_size=batch_size,
        sort_by_length=sort_by_length,
    )
    a = encoder.encode(data.sentence1, **kwargs)
    b = encoder.encode(data.sentence2, **kwargs)
    positive = data.gold >= STS_POSITIVE
    geometry = geometry_metrics(
        np.concatenate([a, b]), positives=(a[positive], b[positive]), max_points=GEOMETRY_POINTS
    )
    return {**sts_scores(a, b, data.gold), **geometry}


def _chunks(n: int, size: int) -> Sequence[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def evaluate_ir(
    encoder: Encoder | EmbeddingMemo,
    data: IrData,
    *,
    max_length_query: int,
    max_length_passage: int,
    instruction: str = "",
    batch_size: int = 64,
    sort_by_length: bool = True,
    corpus_chunk: int = 8192,
    per_query: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """nDCG@10 / Recall@100 / MRR@10 / MAP x100 by exact cosine search, streaming the corpus in chunks;
    plus the geometry of (a sample of) the document embeddings (positives: query, relevant document).
    ``per_query``, when given, receives each query's metrics (for paired tests between models)."""
    qids = list(data.queries)
    query_emb = encoder.encode(
        [data.queries[q] for q in qids],
        max_length=max_length_query,
        instruction=instruction,
        batch_size=batch_size,
        sort_by_length=sort_by_length,
    )
    row_of = {doc_id: row for row, doc_id in enumerate(data.doc_ids)}
    pairs = [
        (qi, row_of[d])
        for qi, q in enumerate(qids)
        for d, grade in data.qrels[q].items()
        if grade > 0 and d in row_of
    ]
    n_docs = len(data.doc_ids)
    sample = np.random.default_rng(0).choice(n_docs, min(n_docs, GEOMETRY_POINTS), replace=False)
    wanted = np.union1d(sample, [row for _, row in pairs]).astype(int)
    kept: dict[int, np.ndarray] = {}
    top = RunningTopK(query_emb, TOP_K + 1)  # one spare for the self-hit rule
    started = time.perf_counter()
    for rows in _chunks(n_docs, corpus_chunk):
        emb = encoder.encode(
            data.doc_texts[rows.start : rows.stop],
            max_length=max_length_passage,
            batch_size=batch_size,
            sort_by_length=sort_by_length,
        )
        top.add(emb)
        for row in wanted[(wanted >= rows.start) & (wanted < rows.stop)]:
            kept[int(row)] = emb[row - rows.start]
    seconds = time.perf_counter() - started
    print(f"[eval] {n_docs} documents embedded and searched in {seconds:.1f} s")
    scores, doc_rows = top.result()
    run = build_run(qids, data.doc_ids, scores, doc_rows, TOP_K)
    positives = (
        query_emb[[qi for qi, _ in pairs]],
        np.stack([kept[row] for _, row in pairs]) if pairs else query_emb[:0],
    )
    geometry = geometry_metrics(
        np.stack([kept[int(row)] for row in sample]),
        positives=positives,
        max_points=GEOMETRY_POINTS,
    )
    queries = per_query_ir_metrics(data.qrels, run)
    if per_query is not None:
        per_query.update(queries)
    return {**mean_ir_metrics(queries), **geometry}


def score(
    encoder: Encoder,
    data: StsData | IrData,
    text: TextSettings,
    *,
    batch_size: int = 64,
    sort_by_length: bool = True,
    corpus_chunk: int = 8192,
    per_query: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """Every metric of one loaded benchmark: :func:`evaluate_sts` for STS pairs, :func:`evaluate_ir`
    for retrieval (``per_query`` receives its per-query metrics), with the token limits and
    instructions of ``text``."""
    if isinstance(data, StsData):
        return evaluate_sts(
            encoder,
            data,
            max_length=text.max_length_sts,
            instruction=text.instruction_sts,
            batch_size=batch_size,
            sort_by_length=sort_by_length,
        )
    return evaluate_ir(
        encoder,
        data,
        max_length_query=text.max_length_query,
        max_length_passage=text.max_length_passage,
        instruction=text.instruction_ir,
        batch_size=batch_size,
        sort_by_length=sort_by_length,
        corpus_chunk=corpus_chunk,
        per_query=per_query,
    )


def run_benchmarks(
    encoder: Encoder,
    benchmarks: list[EvalBenchmark],
    *,
    data_root: str,
    run_dir: str,
    batch_size: int = 64,
    sort_by_length: bool = True,
    corpus_chunk: int = 8192,
    text: TextSettings | None = None,
    held_out_queries: dict[str, dict[str, dict[str, float]]] | None = None,
) -> dict[str, dict[str, float]]:
    """{benchmark name: {metric: value}} for every benchmark that could be loaded, in config order
    (a text shared by several benchmarks is encoded once, see ``EmbeddingMemo``); prints each
    benchmark's encoding progress every 30 s and its texts, seconds and texts/s at the end.
    ``text``: token limits and instructions (default: ``ModelConfig``'s). ``held_out_queries``, when
    given, receives {benchmark: {query id: metrics}} of each held-out retrieval benchmark."""
    text = text or ModelConfig().text_settings()
    for bench in benchmarks:
        if bench.format not in FORMATS[bench.kind]:
            raise ValueError(
                f"eval benchmark {bench.name!r}: format {bench.format!r} cannot be kind {bench.kind!r}"
                f" (kind {bench.kind} takes {', '.join(FORMATS[bench.kind])})"
            )
    results: dict[str, dict[str, float]] = {}
    memo = EmbeddingMemo(encoder)
    for bench in benchmarks:
        memo.progress = EncodeProgress(f"[eval] {bench.name}")
        encoded = memo.encoded
        data = (
            load_sts(bench, data_root)
            if bench.kind == "sts"
            else load_ir(bench, data_root, run_dir)
        )
        if data is None:  # an ir_dev slice not mined yet
            continue
        queries = {} if held_out_queries is not None and bench.held_out else None
        results[bench.name] = score(
            memo,
            data,
            text,
            batch_size=batch_size,
            sort_by_length=sort_by_length,
            corpus_chunk=corpus_chunk,
            per_query=queries,
        )
        if queries:
            held_out_queries[bench.name] = queries
        memo.progress.finish(memo.encoded - encoded)
    memo.progress = None
    return results
