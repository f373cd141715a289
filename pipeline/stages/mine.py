"""The mine stage: ``<run dir>/prepared``'s IR shards -> ``<run dir>/mined/``: ``ir/<source>.parquet``
with hard negatives, ``ir_dev.json`` (the held-out IR dev slice) and ``stats.json`` (see
``pipeline.data.mine_sources``). Key: the prepare stage's key, the mining settings and the seed (and
the model when mining encodes text). Dense mining on a GPU run encodes in a Ray task holding a GPU."""

from __future__ import annotations

from typing import Any

from pipeline import storage
from pipeline.config import Config
from pipeline.data.mine_sources import STATS_FILE, MineSource, mine_sources
from pipeline.data.prepare import load_manifest
from pipeline.data.readers import resolve_path
from pipeline.inference import inference_device, on_inference_device
from pipeline.model.encoder import Encoder
from pipeline.stage_cache import cached, input_hash, mark_done, recorded_hash
from pipeline.stages import prepare


def out_dir(run_dir: str) -> str:
    """``<run dir>/mined``."""
    return storage.join(run_dir, "mined")


def stats_path(run_dir: str) -> str:
    """``<run dir>/mined/stats.json``."""
    return storage.join(out_dir(run_dir), STATS_FILE)


def seed(cfg: Config) -> int:
    """What seeds the dev slice and the negatives: ``mining.seed``, else ``run.seed``."""
    return cfg.run.seed if cfg.mining.seed is None else cfg.mining.seed


def input_key(cfg: Config) -> str:
    """The stage's key: the prepare stage's key and everything that changes the mined output."""
    prepared = recorded_hash(prepare.out_dir(cfg.run.dir), "run `python -m jobs.prepare` first")
    settings = {"mining": cfg.mining.model_dump(mode="json", exclude={"seed"}), "seed": seed(cfg)}
    if cfg.mining.encodes:
        settings["model"] = cfg.model.model_dump(mode="json")
    return input_hash(prepared, settings)


def _load_encoder(cfg: Config) -> Encoder:
    path = cfg.model.resolved_path()
    print(f"[mine] encoder {cfg.model.name_or_path} -> {path}")
    return Encoder.from_pretrained(
        path,
        pooling=cfg.model.pooling,
        normalize=True,
        device=inference_device(cfg.train.use_gpu),
        bf16=cfg.eval.bf16,
    )


def run(cfg: Config) -> dict[str, Any]:
    """Mine the prepared IR sources (reused when the key is unchanged); returns ``stats.json``."""
    out = out_dir(cfg.run.dir)
    digest = input_key(cfg)
    done = cached(out, digest)
    if done is not None:
        print(f"[mine] inputs unchanged (hash {digest[:12]}): reusing {out}")
        return storage.read_json(done["stats"])
    manifest = load_manifest(prepare.out_dir(cfg.run.dir))
    sources = [
        MineSource(
            name=name,
            shard=entry["shard"],
            beir_folder=resolve_path(entry["path"], cfg.data.root)
            if entry["format"] == "beir"
            else None,
            split=entry["split"],
        )
        for name, entry in manifest["sources"].items()
        if entry["task"] == "ir"
    ]
    stats = on_inference_device(  # dense mining on a GPU run: in a task holding a GPU
        cfg.train.use_gpu and cfg.mining.encodes,
        mine_sources,
        sources,
        out_dir=out,
        mining=cfg.mining,
        seed=seed(cfg),
        encoder_factory=lambda: _load_encoder(cfg),
        text=cfg.model.text_settings(),
    )
    outputs = [entry["output"] for entry in stats["sources"].values()]
    if stats["dev"]:
        outputs.append(stats["dev"]["output"])
    path = stats_path(cfg.run.dir)
    mark_done(out, digest, stats=path, outputs=[path, *outputs])
    return storage.read_json(path)
