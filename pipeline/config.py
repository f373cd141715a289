"""The pipeline's one typed config: YAML presets in ``configs/`` plus ``section.key=value`` overrides.

A preset may name a parent with ``base: other`` (a file in the same folder); the child's mapping is
merged over the parent's. Unknown keys and wrong types fail at start-up with a ``ConfigError`` naming
the key and the file it came from.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from pipeline.fusion import registry as fusion_registry

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

Task = Literal["ir", "sts"]
DEV_METRICS = ("dev_sts_spearman", "dev_ir_ndcg@10")  # what in-loop evaluation reports (x100)
HEADLINE_METRIC = {"sts": "spearman", "ir": "ndcg@10"}  # what a benchmark is ranked and judged on
# what the held-out check judges: a retrieval benchmark on every ranking metric a skeptical scorer
# may quote (issue #24's was scored on MAP and MRR), not only the headline nDCG@10
HELD_OUT_METRICS = {"sts": ("spearman",), "ir": ("ndcg@10", "map", "mrr@10")}
# an objective key "dev:<eval benchmark name>" adds that benchmark's headline score (STS Spearman,
# IR nDCG@10) to dev scoring, e.g. out-of-domain retrieval the trained data does not cover;
# "dev:<name>:<metric>" adds one of its BENCHMARK_METRICS instead (e.g. the MRR@10 the held-out rule
# also judges)
DEV_BENCHMARK_PREFIX = "dev:"
BENCHMARK_METRICS = {  # what pipeline.eval scores per kind (evaluate_sts, ir_metrics)
    "sts": ("spearman", "pearson"),
    "ir": ("ndcg@10", "recall@100", "mrr@10", "map"),
}
SPLIT_FORMATS = ("beir", "snli", "hf")  # formats whose `split` picks the file; others read `path`
Pooling = Literal["mean", "cls", "last_token"]
TrainMode = Literal["joint", "ir_only", "sts_only", "mixed"]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    """Where a run writes: everything goes under ``<root>/<name>/``."""

    root: str = "runs"  # a local path or a URI pyarrow understands (s3://, gs://, file://)
    name: str = ""  # empty: the preset's name
    seed: int = 49
    # the Ray cluster adds nodes on demand (KubeRay autoscaler): a CPU shortfall at submission is
    # then no hang, and the start-up headroom check is skipped
    autoscaling: bool = False

    @property
    def dir(self) -> str:
        """The run directory, ``<root>/<name>``."""
        return f"{self.root.rstrip('/')}/{self.name}"


class SourceConfig(_Section):
    """One input dataset, converted into the project's own record format by a reader."""

    name: str  # tag carried by every record (``source`` column)
    task: Task
    format: Literal["own", "stsb", "stsb_csv", "beir", "trecqa", "snli", "hf"]
    path: str  # relative to ``data.root`` unless absolute / a URI / a Hub id (format "hf")
    split: str = "train"  # BEIR qrels split, SNLI split, HF split
    skip: int = Field(0, ge=0)  # drop the first N records (with limit: a slice of the file)
    limit: int | None = None  # keep only the first N records after `skip` (smoke tests)
    score_range: tuple[float, float] | None = (
        None  # gold scale of STS sources; None = reader default
    )
    hf_columns: dict[str, str] = Field(
        default_factory=dict
    )  # own field -> dataset column (format hf)


class EvalBenchmark(_Section):
    """One evaluation benchmark: an STS pair file or a BEIR-style retrieval folder."""

    name: str  # key in eval.json, e.g. "stsb-test"
    kind: Task
    format: Literal["own", "stsb", "stsb_csv", "beir", "ir_dev", "trecqa", "snli"]
    path: str = ""
    split: str = "test"
    # drop the first N pairs / queries (e.g. the questions a training source keeps with `limit`)
    skip: int = Field(0, ge=0)
    limit: int | None = None
    pool: int = Field(
        0, ge=0
    )  # kind ir: search a BM25 top-`pool` pool per query (+ relevant docs); 0 = whole corpus
    # data no stage trains or selects on: the report checks the registered model against the base
    # on it (at most eval.held_out_tolerance points lower on each of HELD_OUT_METRICS)
    held_out: bool = False


class DataConfig(_Section):
    root: str = "../shared/data"
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    sources: list[SourceConfig] = Field(default_factory=list)


class ModelConfig(_Section):
    """The encoder: a Hugging Face folder or id, ``packaged`` for the bundled all-MiniLM-L6-v2,
    or ``tiny-random`` (a small random BERT with the MiniLM tokenizer, for tests)."""

    name_or_path: str = "packaged"
    pooling: Pooling = "mean"
    normalize: bool = True
    max_length_query: int = Field(64, gt=0)
    max_length_passage: int = Field(256, gt=0)
    max_length_sts: int = Field(64, gt=0)
    instruction_ir: str = ""  # "" = no prefix; else "Instruction: {it} Query: " before queries
    instruction_sts: str = ""  # same, before both sides of STS pairs
    gradient_checkpointing: bool = False
    tiny_layers: int = 2  # shape of the tiny-random model
    tiny_hidden: int = 64

    def resolved_path(self) -> str:
        """``name_or_path`` as a folder or id ``from_pretrained`` opens offline (the packaged
        MiniLM's folder, a tiny random model built on first use)."""
        from pipeline.model.loading import resolve_model_path

        return resolve_model_path(self.name_or_path, self.tiny_layers, self.tiny_hidden)

    def text_settings(self) -> TextSettings:
        """How texts are cut and prefixed before encoding (this section's five text fields)."""
        return TextSettings(
            max_length_query=self.max_length_query,
            max_length_passage=self.max_length_passage,
            max_length_sts=self.max_length_sts,
            instruction_ir=self.instruction_ir,
            instruction_sts=self.instruction_sts,
        )


@dataclass(frozen=True)
class TextSettings:
    """Token limits and instruction prefixes of the texts an encoder reads: what tokenisation, dev
    scoring, evaluation and mining need of ``ModelConfig``."""

    max_length_query: int
    max_length_passage: int
    max_length_sts: int
    instruction_ir: str
    instruction_sts: str


class MiningConfig(_Section):
    method: Literal["bm25", "dense", "both"] = "bm25"
    num_negatives: int = Field(4, gt=0)  # also caps the negatives a source ships (TREC-QA)
    # records keep at most this many positives (seeded sample); None = all. The IR loss has one term
    # per positive slot, so a record with many positives (a TREC-QA question has up to 40) would
    # fill most of a batch's terms alone
    max_positives: int | None = Field(None, gt=0)
    rank_window: tuple[int, int] = (10, 50)  # 1-based, inclusive ranks to sample negatives from
    margin: float | None = None  # drop candidates with dense score > positive's score - margin
    dev_queries: int = Field(100, ge=0)  # seeded held-out slice of the IR training queries
    dev_source: str = "scifact"  # which IR source the dev slice is cut from
    # seeds the dev slice and the negatives' sampling; None = run.seed. Set it to keep dev data and
    # negatives fixed while run.seed varies (repeated trials that measure training's own noise)
    seed: int | None = None

    @property
    def encodes(self) -> bool:
        """Whether mining encodes text (method ``dense`` / ``both``, or a ``margin``)."""
        return self.method != "bm25" or self.margin is not None


class SamplerConfig(_Section):
    mode: Literal["proportional", "ratio", "round_robin", "temperature"] = "proportional"
    ir_ratio: float = Field(0.5, gt=0.0, lt=1.0)  # mode "ratio": fraction of IR steps
    alpha: float = Field(
        0.5, ge=0.0
    )  # mode "temperature": source sampled proportional to size**alpha
    # every global batch from one source of its task (the authors' sampler: each data file a
    # sub-dataset, so a query's in-batch negatives come from its own corpus); false mixes a task's
    # sources in every batch
    one_source_per_batch: bool = False


class LossConfig(_Section):
    ir_temperature: float = Field(0.02, gt=0.0)
    sts_temperature: float = Field(0.05, gt=0.0)  # RankKL and PRO
    midnce_temperature: float = Field(0.02, gt=0.0)
    midnce_threshold: float = Field(0.8, ge=0.0, le=1.0)  # on the [0, 1] normalised gold scale
    w_midnce: float = Field(1.0, ge=0.0)
    w_pro: float = Field(0.5, ge=0.0)
    w_pearson: float = Field(2.0, ge=0.0)
    w_rankkl: float = Field(5.0, ge=0.0)
    w_cosent: float = Field(0.0, ge=0.0)
    cosent_scale: float = Field(20.0, gt=0.0)


class TrainConfig(_Section):
    mode: TrainMode = "joint"

    modes: list[TrainMode] = Field(default_factory=lambda: ["joint"])  # trained by jobs.pipeline
    epochs: int = Field(1, gt=0)
    max_steps: int | None = None  # stop early (tests, smoke)
    lr: float = Field(2e-5, gt=0.0)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    # padded tokens of one worker's IR micro-batch (queries + passages); a batch over it gets shorter
    # passages, with a warning, instead of running out of memory. None = no cap
    max_tokens_per_batch: int | None = Field(None, gt=0)
    # encoder passes of a step run as length-sorted chunks of this many rows, each trimmed to its own
    # longest row (same embeddings, fewer pad tokens); 0 = one padded pass per batch
    bucket_rows: int = Field(16, ge=0)
    # passages are cut here in training (None: model.max_length_passage, where evaluation cuts)
    max_length_passage: int | None = Field(None, gt=0)
    ir_global_batch: int = Field(16, gt=0)  # queries per IR step, all workers together
    sts_global_batch: int = Field(32, gt=0)  # pairs per STS step, all workers together
    num_workers: int = Field(2, gt=0)
    cpus_per_worker: float = Field(0.5, gt=0.0)
    # torch threads per worker; 0 = the usable CPUs (the pod's limit) / the workers on that node, at
    # most cpus_per_worker (Ray sets no thread count for fractional CPUs: torch would start one per core)
    threads_per_worker: int = Field(0, ge=0)
    use_gpu: bool = False
    bf16: bool = False
    eval_every: int = Field(0, ge=0)  # 0 = only at the end
    # a checkpoint (without dev metrics) every N steps besides the evaluations: a crash loses at
    # most N - 1 steps; 0 = checkpoints only at evaluations
    checkpoint_every: int = Field(0, ge=0)
    keep_top_k: int = Field(2, gt=0)
    checkpoint_metric: str = "dev_objective"  # dev_objective | dev_mean | dev_sts_spearman | ...
    # the dev objective: weights of the dev metrics (renormalised over those a run has); it ranks
    # checkpoints, fusion variants and Tune trials. Keys: DEV_METRICS, or "dev:<eval benchmark>" for
    # a benchmark scored as dev data at every evaluation (never one marked held_out, never a file
    # some source trains on)
    objective: dict[str, float] = Field(
        default_factory=lambda: {"dev_sts_spearman": 0.5, "dev_ir_ndcg@10": 0.5}
    )
    dev_sts: str = "stsb-dev"  # the eval benchmark (by name) scored as STS dev during training
    dev_ir_pool: int = Field(
        50, ge=0
    )  # in-loop IR dev: BM25 top-k pool per query; 0 = whole corpus
    max_failures: int = Field(1, ge=0)

    def passage_length(self, model: ModelConfig) -> int:
        """Where training cuts passages: ``max_length_passage``, else the model's (evaluation's)."""
        return self.max_length_passage or model.max_length_passage


class EvalConfig(_Section):
    benchmarks: list[EvalBenchmark] = Field(default_factory=list)
    batch_size: int = Field(64, gt=0)
    sort_by_length: bool = True
    corpus_chunk: int = Field(8192, gt=0)  # documents per chunk of the exact top-k
    fused_models: Literal["chosen", "all"] = "all"  # which fused models the evaluate stage scores
    # score each trained mode's best checkpoint on every benchmark (false: base and fused models only;
    # the modes' dev scores still come from training and appear in the report's dev table)
    trained_models: bool = True
    # bf16 autocast for every encode of dev scoring, evaluation and mining (CUDA runs that support
    # it; float32 otherwise). One setting for all of them: the scores fusion compares are measured alike
    bf16: bool = False
    held_out_tolerance: float = Field(
        1.0, ge=0.0
    )  # points the registered model may lose to the base


class _FusionChoice(_Section):
    """The fusion section's own fields; ``FusionConfig`` adds one field per method knob."""

    # registered methods (pipeline/fusion/registry.py), tried in this order
    methods: list[str] = Field(default_factory=lambda: list(fusion_registry.METHODS))
    # modes: each mode's best checkpoint; top_k: train.mode's kept checkpoints; tune_best_k: the best
    # tune.best_k trials of the sweep tune.name (run `python -m tune.sweep` first); paths: the model
    # folders in fusion.paths (e.g. checkpoints of runs with different settings)
    candidates: Literal["modes", "top_k", "tune_best_k", "paths"] = "modes"
    # candidates "modes": fuse these modes' best checkpoints ([] = every trained mode)
    modes: list[TrainMode] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)  # candidates "paths": local folders or URIs
    num_cpus: float = Field(2.0, gt=0.0)  # the fusion task's CPUs = its dev scoring's threads

    @field_validator("methods")
    @classmethod
    def _methods_registered(cls, methods: list[str]) -> list[str]:
        for name in methods:
            fusion_registry.get_method(name)  # a ValueError listing the registered ones
        return methods

    @model_validator(mode="after")
    def _paths_named(self) -> _FusionChoice:
        if self.candidates == "paths" and len(self.paths) < 2:
            raise ValueError(
                f"fusion.candidates=paths needs at least two model folders in fusion.paths, "
                f"got {self.paths}"
            )
        return self

    def method_knobs(self) -> dict[str, Any]:
        """The fusion methods and their knobs (``fuse_and_select``'s keywords), without the fields
        that say which checkpoints to fuse."""
        return self.model_dump(exclude={"candidates", "modes", "paths", "num_cpus"})


# A field per knob of the registered methods, as each method file's SPEC declares it (type, bounds,
# default grid): delta_power, delta_granularity, delta_normalize, ta_lambda, ties_density.
FusionConfig = create_model(
    "FusionConfig",
    __base__=_FusionChoice,
    __module__=__name__,
    __doc__="Which checkpoints the fuse stage merges, with which methods and knob grids.",
    **{name: knob.config_field() for name, knob in fusion_registry.knobs().items()},
)


class TrackingConfig(_Section):
    uri: str = ""  # "" = $MLFLOW_TRACKING_URI or sqlite:///<run dir>/mlflow.db
    experiment: str = "codiemb"
    registered_model: str = "codiemb-encoder"
    required: bool = True


class TuneConfig(_Section):
    """A Ray Tune sweep (``python -m tune.sweep``): each trial trains ``mode`` with the train section's
    budget (``train.max_steps``, ``train.eval_every``) and reports the dev objective at every eval."""

    name: str = "sweep"  # its folder is <run dir>/tune/<name>/; running the same name again resumes
    mode: TrainMode = "joint"
    num_samples: int = Field(8, gt=0)
    max_concurrent_trials: int = Field(1, gt=0)
    search: Literal["random", "optuna"] = "random"
    # "section.key" -> {"loguniform": [lo, hi]} | {"uniform": [lo, hi]} | {"choice": [a, b, ...]};
    # empty = DEFAULT_SPACE of tune/space.py (sampler, the four STS weights, IR temperature, lr)
    space: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)
    asha: bool = True  # early-stop trials behind on the dev objective (needs train.eval_every > 0)
    grace_steps: int = Field(0, ge=0)  # steps before ASHA may stop a trial; 0 = train.eval_every
    reduction_factor: int = Field(2, ge=2)
    best_k: int = Field(3, gt=0)  # trials handed to fusion (fusion.candidates=tune_best_k)
    trial_max_failures: int = Field(1, ge=0)  # Tune retries of a failed trial


class ServeAutoscaling(_Section):
    """Ray Serve autoscaling of the embeddings deployment (replaces ``serve.num_replicas``)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, gt=0)
    target_ongoing_requests: float = Field(2.0, gt=0.0)  # per replica, what Serve scales towards

    @model_validator(mode="after")
    def _bounds(self) -> ServeAutoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} > max_replicas={self.max_replicas}")
        return self


class ServeConfig(_Section):
    """The embeddings endpoint (``python -m jobs.serve``, ``pipeline/serve/``)."""

    # "" = models:/<tracking.registered_model>@champion on tracking.uri, followed as the alias
    # moves; else a model folder, served as it is
    model: str = ""
    route: str = "/"  # the app's route prefix: POST <route>v1/embeddings
    host: str = "127.0.0.1"  # where jobs.serve's HTTP proxy listens (0.0.0.0 in a cluster)
    port: int = Field(8000, gt=0, lt=65536)
    # requests per @serve.batch call, and how long a batch waits to fill: on 2 CPU cores 64 / 0.05
    # gave 1.3x the texts/s of 32 / 0.01 at 32 concurrent clients, for +50 ms at one client
    # (bench/serve_load.py, docs/PERFORMANCE.md); lower the wait for latency
    max_batch_size: int = Field(64, gt=0)
    batch_wait_timeout_s: float = Field(0.05, ge=0.0)
    num_replicas: int = Field(1, gt=0)
    autoscaling: ServeAutoscaling | None = None  # set: Serve scales replicas, num_replicas unused
    num_cpus: float = Field(1.0, gt=0.0)  # per replica (torch threads: its whole CPUs, at least 1)
    num_gpus: float = Field(0.0, ge=0.0)  # per replica
    alias_poll_s: float = Field(30.0, ge=0.0)  # how often the champion alias is read; 0 = never
    max_texts_per_request: int = Field(256, gt=0)
    max_body_bytes: int = Field(2_000_000, gt=0)

    @model_validator(mode="after")
    def _route(self) -> ServeConfig:
        if not self.route.startswith("/"):
            raise ValueError(f"serve.route={self.route!r}: must start with '/'")
        return self


class DebugConfig(_Section):
    fail_at_step: int | None = None


class Config(_Section):
    """The whole pipeline's settings; one object passed to every job."""

    preset: str = ""  # set by the loader: the preset file's stem
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)
    # set by load_config for start-up messages: the preset file, the keys set on the command line
    _origin: tuple[str, frozenset[str]] = PrivateAttr(default=("", frozenset()))

    @model_validator(mode="after")
    def _check_combinations(self) -> Config:
        for key, asked in (("train.bf16", self.train.bf16), ("eval.bf16", self.eval.bf16)):
            if asked and not self.train.use_gpu:
                raise ValueError(
                    f"{key}=true needs train.use_gpu=true (bf16 autocast runs on CUDA only)"
                )
        self._check_objective()
        for bench in (b for b in self.eval.benchmarks if b.held_out):
            self._refuse_trained_rows(f"eval.benchmarks {bench.name!r} is held_out: true", bench)
        lo, hi = self.mining.rank_window
        if not 1 <= lo <= hi:
            raise ValueError(f"mining.rank_window={self.mining.rank_window}: need 1 <= low <= high")
        return self

    def _refuse_trained_rows(self, what: str, bench: EvalBenchmark) -> None:
        """Raise when ``bench`` reads rows a training source trains on (``what`` says why that
        matters)."""
        source = next((s for s in self.data.sources if _same_file(s, bench)), None)
        if source is not None:
            raise ValueError(
                f"{what}, but it reads {bench.path!r} rows {_rows(bench)}, which data.sources "
                f"{source.name!r} trains on (rows {_rows(source)}): give them disjoint skip/limit"
            )

    def _check_objective(self) -> None:
        objective = self.train.objective
        keys = [k for k in objective if k not in DEV_METRICS]
        unknown = [k for k in keys if not k.startswith(DEV_BENCHMARK_PREFIX)]
        if unknown or not any(w > 0 for w in objective.values()):
            raise ValueError(
                f"train.objective={objective}: weights of {list(DEV_METRICS)} or "
                f"'{DEV_BENCHMARK_PREFIX}<eval benchmark name>[:<metric>]', at least one positive"
            )
        for name in objective_benchmarks(objective):
            bench = next((b for b in self.eval.benchmarks if b.name == name), None)
            if bench is None:
                known = [b.name for b in self.eval.benchmarks]
                raise ValueError(
                    f"train.objective names '{DEV_BENCHMARK_PREFIX}{name}', but eval.benchmarks "
                    f"has no benchmark {name!r} (known: {known})"
                )
            if bench.held_out:
                raise ValueError(
                    f"train.objective names '{DEV_BENCHMARK_PREFIX}{name}', which eval.benchmarks "
                    "marks held_out: true; what the objective sees chooses checkpoints and fusion, "
                    "so it is no longer held out (drop it from the objective, or add a dev "
                    "benchmark on other data)"
                )
            self._refuse_trained_rows(
                f"train.objective names '{DEV_BENCHMARK_PREFIX}{name}'", bench
            )
        for key in (k for k in keys if objective[k] > 0):
            name, metric = objective_key(key)
            kind = next(b.kind for b in self.eval.benchmarks if b.name == name)
            if metric is not None and metric not in BENCHMARK_METRICS[kind]:
                raise ValueError(
                    f"train.objective names '{key}', but a {kind} benchmark has no metric "
                    f"{metric!r} (known: {list(BENCHMARK_METRICS[kind])})"
                )


def objective_key(key: str) -> tuple[str, str | None]:
    """The benchmark name and metric of an objective key ``dev:<name>[:<metric>]`` (metric None: the
    benchmark's headline score)."""
    name, _, metric = key.removeprefix(DEV_BENCHMARK_PREFIX).partition(":")
    return name, metric or None


def objective_benchmarks(objective: dict[str, float]) -> list[str]:
    """The eval benchmarks (by name, once each) that ``train.objective`` scores as dev data, weight
    > 0."""
    names = [
        objective_key(key)[0]
        for key, weight in objective.items()
        if key.startswith(DEV_BENCHMARK_PREFIX) and weight > 0
    ]
    return list(dict.fromkeys(names))


def _same_file(source: SourceConfig, bench: EvalBenchmark) -> bool:
    """Whether ``bench`` reads records ``source`` trains on: same path, same split where the format
    picks its file by split, and overlapping ``skip``/``limit`` rows (both count the same records)."""
    if os.path.normpath(source.path) != os.path.normpath(bench.path):
        return False
    if bench.format in SPLIT_FORMATS and source.split != bench.split:
        return False
    ends = [s.skip + s.limit if s.limit is not None else math.inf for s in (source, bench)]
    return max(source.skip, bench.skip) < min(ends)


def _rows(part: SourceConfig | EvalBenchmark) -> str:
    end = "end" if part.limit is None else part.skip + part.limit
    return f"{part.skip}..{end}"


# Mappings whose keys are the user's, not config fields: a preset or an override replaces them whole
# (``train.objective={dev_sts_spearman: 1}`` ranks on STS alone, not on STS plus the base's keys);
# an override of one entry (``train.objective.dev_sts_spearman=2``) changes that entry alone.
WHOLE_MAPPINGS = {("train", "objective"), ("tune", "space")}


def _deep_merge(base: dict, override: dict, path: tuple[str, ...] = ()) -> dict:
    merged = dict(base)
    for key, value in override.items():
        here = (*path, key)
        if (
            isinstance(value, dict)
            and isinstance(merged.get(key), dict)
            and here not in WHOLE_MAPPINGS
        ):
            merged[key] = _deep_merge(merged[key], value, here)
        else:
            merged[key] = value
    return merged


def _read_preset(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"unknown preset {path.stem!r}: no file {path} (known presets: {known})")
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    parent = raw.pop("base", None)
    if parent is None:
        return raw
    return _deep_merge(_read_preset(path.parent / f"{parent}.yaml", (*seen, path)), raw)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


SHORTHANDS = {"model": "model.name_or_path"}  # `model=PATH` on the command line


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-5", "model=/m"]`` -> ``{"train.lr": 1e-5, "model.name_or_path": "/m"}``
    (values parsed as YAML)."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        key = SHORTHANDS.get(key.strip(), key.strip())
        values[key] = yaml.safe_load(text) if text.strip() else ""
    return values


def _apply_overrides(tree: dict, values: dict[str, Any]) -> dict:
    """``tree`` with each dotted ``key: value`` applied in order. A mapping value merges into its
    section key by key, except at a ``WHOLE_MAPPINGS`` path, which it replaces; a key *inside* such a
    mapping (``train.objective.dev_sts_spearman=2``) sets that one entry and keeps the others."""
    for dotted, value in values.items():
        override: dict = {}
        _set_dotted(override, dotted, value)
        parts = tuple(dotted.split("."))
        for whole in WHOLE_MAPPINGS:
            if len(parts) > len(whole) and parts[: len(whole)] == whole:
                kept, given = tree, override
                for key in whole[:-1]:
                    kept, given = kept.get(key, {}), given[key]
                if isinstance(kept.get(whole[-1]), dict):
                    given[whole[-1]] = _deep_merge(kept[whole[-1]], given[whole[-1]])
        tree = _deep_merge(tree, override)
    return tree


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def load_config(preset: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a preset (a name in ``configs/`` or a YAML path) and apply ``section.key=value`` overrides."""
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{preset}.yaml"
    raw = _read_preset(path)
    values = parse_overrides(overrides or [])
    merged = _apply_overrides(raw, values)
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as exc:
        origin = f"{path} (with overrides {overrides})" if overrides else str(path)
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"{origin}: {problems}") from None
    cfg.preset = path.stem
    cfg._origin = (str(path), frozenset(_dotted_keys(_apply_overrides({}, values))))
    if not cfg.run.name:
        cfg.run.name = path.stem
    return cfg


def with_overrides(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with ``{"section.key": value}`` applied and validated (a Tune trial's config)."""
    try:
        return Config.model_validate(_apply_overrides(cfg.model_dump(), values))
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"overrides {values}: {problems}") from None


def with_absolute_paths(cfg: Config) -> Config:
    """``cfg`` with local ``data.root`` and ``run.root`` made absolute, for code that runs in another
    working directory (Tune starts each trial in its own folder)."""
    values = {
        f"{section}.root": os.path.abspath(root)
        for section, root in (("data", cfg.data.root), ("run", cfg.run.root))
        if "://" not in root
    }
    return with_overrides(cfg, values)


def parse_cli(argv: list[str] | None = None, description: str = "") -> Config:
    """The jobs' shared command line: ``--config PRESET [section.key=value ...]``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="a preset name or a YAML file in configs/")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print its traceback too (also CODIEMB_DEBUG=1)",
    )
    args = parser.parse_intermixed_args(argv)
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as exc:
        if args.debug:
            raise
        parser.exit(2, f"config error: {exc}\n")


# Start-up checks: a job runs them (pipeline.cli.startup_checks) before any work and before Ray
# starts, so a wrong path fails in seconds with one line naming the key, where it was set, and the fix.


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def key_origin(cfg: Config, key: str) -> str:
    """Where ``key``'s value came from, for messages: ``set on the command line`` or the preset file
    (relative to the working directory when under it)."""
    preset, overridden = cfg._origin
    if key in overridden:
        return "set on the command line"
    if not preset:
        return "the default"
    path = Path(preset).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _shown(path: str) -> str:
    """``path``, plus where it resolves to when it is relative (jobs may run in another folder)."""
    if "://" in path or os.path.isabs(path):
        return path
    return f"{path} (= {os.path.abspath(path)})"


def uses_data_root(cfg: Config) -> bool:
    """Whether a data source or benchmark path is read from under ``data.root``."""
    paths = [s.path for s in cfg.data.sources if s.format != "hf"]
    paths += [b.path for b in cfg.eval.benchmarks if b.path and b.format != "ir_dev"]
    return any("://" not in p and not os.path.isabs(p) for p in paths)


def check_data_root(cfg: Config) -> None:
    """``ConfigError`` when ``data.root`` is read from (see ``uses_data_root``) but is not there; a
    URI is looked up through ``pipeline.storage``."""
    if not uses_data_root(cfg):
        return
    from pipeline import storage

    root = cfg.data.root
    where = f"data.root {_shown(root)} ({key_origin(cfg, 'data.root')})"
    fix = (
        "point data.root at your copy of the public datasets (README, 'Data'), "
        "e.g. data.root=../shared/data"
    )
    try:
        found = storage.exists(root)
    except Exception as exc:  # a URI whose store cannot be reached or is unknown
        raise ConfigError(f"{where} cannot be read ({type(exc).__name__}: {exc}): {fix}") from exc
    if not found:
        raise ConfigError(f"{where} does not exist: {fix}")
    if "://" not in root and not os.path.isdir(root):
        raise ConfigError(f"{where} is a file, not a folder: {fix}")


def check_run_root(cfg: Config) -> None:
    """``ConfigError`` unless the run directory ``<run.root>/<run.name>`` can be created and written
    (a local one gets a probe file, removed at once; on a URI the folder is created)."""
    from pipeline import storage

    root = cfg.run.root
    where = f"run.root {_shown(root)} ({key_origin(cfg, 'run.root')})"
    fix = "point run.root at a folder you can write, e.g. run.root=runs"
    local = storage.local_path(cfg.run.dir)
    try:
        if local is None:
            storage.makedirs(cfg.run.dir)
            return
        blocker = next((p for p in (Path(local), *Path(local).parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ConfigError(
                f"{where} cannot be written: {blocker} is a file, not a folder: {fix}"
            )
        os.makedirs(local, exist_ok=True)
        with tempfile.TemporaryFile(dir=local):
            pass
    except ConfigError:
        raise
    except Exception as exc:
        reason = (
            f"{exc.strerror}: {exc.filename}"
            if isinstance(exc, OSError) and exc.strerror
            else f"{type(exc).__name__}: {exc}"
        )
        raise ConfigError(f"{where} cannot be written ({reason}): {fix}") from exc
