"""The pipeline stages' bookkeeping without training: evaluation shared between models with the same
weights, the dev scores fusion takes from training instead of measuring again, the Ray Train run
folder that changes with the training settings, the mining seed, the one done-marker scheme, and
the layering (no component imports a stage)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.config import load_config
from pipeline.stage_cache import cached, mark_done
from pipeline.stages import evaluate, fuse


def weights_folder(folder: Path, value: float, metadata: dict | None = None) -> str:
    folder.mkdir(parents=True)
    save_file({"w": torch.full((3, 2), value)}, folder / "model.safetensors", metadata=metadata)
    return str(folder)


def test_models_with_the_same_weights_are_evaluated_once(tmp_path, monkeypatch):
    cfg = load_config("smoke", [f"run.root={tmp_path}"])
    folders = {
        "joint": weights_folder(tmp_path / "joint", 1.0),
        "ir_only": weights_folder(tmp_path / "ir_only", 2.0),
        # a greedy soup of one: the same tensors in a file written by another writer
        "fused:greedy_soup": weights_folder(tmp_path / "soup", 1.0, {"format": "pt"}),
    }
    evaluated = []

    def fake_score(cfg, folder):
        evaluated.append(Path(folder).name)
        queries = {"trecqa-dev": {"q1": {"map": float(len(evaluated))}}}
        return {"stsb-test": {"spearman": float(len(evaluated))}}, queries

    monkeypatch.setattr(evaluate, "score_folder", fake_score)
    results = evaluate.run(cfg, folders)
    # the fused model is scored first (the one a user waits for); joint then reuses its scores
    assert evaluated == ["soup", "ir_only"]
    assert list(results) == list(folders)
    assert results == {
        "joint": {"stsb-test": {"spearman": 1.0}},
        "ir_only": {"stsb-test": {"spearman": 2.0}},
        "fused:greedy_soup": {"stsb-test": {"spearman": 1.0}},
    }
    # the per-query held-out scores follow the same reuse, in eval/held_out_queries.json
    queries = json.loads(Path(evaluate.held_out_queries_path(cfg.run.dir)).read_text())
    assert queries == {
        "joint": {"trecqa-dev": {"q1": {"map": 1.0}}},
        "ir_only": {"trecqa-dev": {"q1": {"map": 2.0}}},
        "fused:greedy_soup": {"trecqa-dev": {"q1": {"map": 1.0}}},
    }
    # a second run finds all three in the cache
    assert evaluate.run(cfg, folders) == results and len(evaluated) == 2


def test_recorded_dev_objective_comes_from_the_checkpoint_state(tmp_path):
    folder = weights_folder(tmp_path / "best", 1.0)
    assert fuse.recorded_dev_objective(folder, "cpu-fp32") is None
    metrics = {"dev_objective": 81.5, "dev_precision": "cpu-fp32", "loss": 0.3}
    (tmp_path / "best" / "train_state.json").write_text(json.dumps({"step": 9, "metrics": metrics}))
    assert fuse.recorded_dev_objective(folder, "cpu-fp32") == 81.5
    (tmp_path / "best" / "train_state.json").write_text(json.dumps({"step": 9, "metrics": {}}))
    assert fuse.recorded_dev_objective(folder, "cpu-fp32") is None


def test_device_recorded_dev_objective_in_another_precision_is_not_compared(tmp_path):
    """A score training measured in bf16 on a GPU is not set beside fused variants scored in fp32."""
    folder = weights_folder(tmp_path / "best", 1.0)
    metrics = {"dev_objective": 81.5, "dev_precision": "cuda-bf16"}
    (tmp_path / "best" / "train_state.json").write_text(json.dumps({"step": 9, "metrics": metrics}))
    assert fuse.recorded_dev_objective(folder, "cuda-bf16") == 81.5
    assert fuse.recorded_dev_objective(folder, "cpu-fp32") is None
    assert fuse.recorded_dev_objective(folder, "cuda-fp32") is None


def test_ray_run_folder_changes_with_the_training_settings(tmp_path):
    from pipeline.stages.train import ray_run_name

    def name(*overrides: str) -> str:
        return ray_run_name(load_config("smoke", [f"run.root={tmp_path}", *overrides]), "joint")

    run_dir = tmp_path / "smoke"
    for stage in ("mined", "prepared"):
        (run_dir / stage).mkdir(parents=True, exist_ok=True)
        (run_dir / stage / "done.json").write_text(json.dumps({"input_hash": "a"}))
    first = name()
    assert first.startswith("smoke-joint-") and name() == first  # same settings: resume
    # changed settings or data: a new run, never the old settings' checkpoints
    assert name("loss.ir_temperature=0.07") != first
    assert name("train.lr=1e-5") != first
    (run_dir / "mined" / "done.json").write_text(json.dumps({"input_hash": "b"}))
    assert name() != first


def test_mining_seed_keeps_dev_data_fixed_while_the_run_seed_varies(tmp_path):
    from pipeline.stages import mine

    (tmp_path / "smoke" / "prepared").mkdir(parents=True)
    (tmp_path / "smoke" / "prepared" / "done.json").write_text(json.dumps({"input_hash": "p"}))

    def key(*overrides: str) -> str:
        cfg = load_config("smoke", [f"run.root={tmp_path}", *overrides])
        return mine.input_key(cfg)

    default = key()
    assert key("mining.seed=49") == default  # None means run.seed (49): old run folders stay valid
    assert key("run.seed=50") != default  # mining follows run.seed unless told otherwise
    assert key("run.seed=50", "mining.seed=49") == default
    assert mine.seed(load_config("smoke", ["run.seed=50", "mining.seed=7"])) == 7


def test_a_stage_record_whose_outputs_are_gone_is_not_reused(tmp_path):
    out, shard = str(tmp_path / "stage"), tmp_path / "stage" / "a.parquet"
    shard.parent.mkdir()
    shard.write_bytes(b"x")
    mark_done(out, "key", outputs=[str(shard)])
    assert cached(out, "key") == {"input_hash": "key", "outputs": [str(shard)]}
    assert cached(out, "other key") is None
    shard.unlink()
    assert cached(out, "key") is None


def test_no_component_imports_a_stage():
    """Stages orchestrate the components, never the other way round."""
    package = Path(__file__).resolve().parent.parent / "pipeline"
    imports_stage = re.compile(r"^\s*(from|import) pipeline\.stages", re.MULTILINE)
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.relative_to(package).parts[0] != "stages" and imports_stage.search(path.read_text())
    ]
    assert offenders == []
