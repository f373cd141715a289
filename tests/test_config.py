"""Config loading: presets, overrides, and the start-up errors that name the key and the file."""

from __future__ import annotations

import pytest

from pipeline.config import (
    BENCHMARK_METRICS,
    CONFIG_DIR,
    ConfigError,
    key_origin,
    load_config,
    parse_cli,
    with_overrides,
)
from pipeline.eval.ir import ir_metrics


@pytest.mark.parametrize("preset", ["demo", "smoke", "gpu", "cluster"])
def test_every_preset_loads_and_names_its_run_directory(preset):
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert cfg.run.name == preset
    assert cfg.run.dir.endswith(f"/{preset}")


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        "demo", ["train.lr=1e-4", "sampler.mode=ratio", "run.root=/tmp/x", "model=/m"]
    )
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.sampler.mode == "ratio"
    assert cfg.run.dir == "/tmp/x/demo"
    assert cfg.model.name_or_path == "/m"


def test_smoke_inherits_demo_and_overrides_the_model():
    smoke, demo = load_config("smoke"), load_config("demo")
    assert smoke.model.name_or_path == "tiny-random"
    assert smoke.train.lr == demo.train.lr
    assert all(source.limit for source in smoke.data.sources)


def test_unknown_key_names_the_key_and_the_file():
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["train.learning_rate=0.1"])
    assert "train.learning_rate" in str(err.value)
    assert "demo.yaml" in str(err.value)


def test_wrong_type_names_the_key_and_the_file(tmp_path):
    preset = tmp_path / "broken.yaml"
    preset.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(preset)
    assert "train.epochs" in str(err.value)
    assert str(preset) in str(err.value)


def test_unknown_preset_names_it_and_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        load_config("no-such-preset")
    message = str(err.value)
    assert "no-such-preset" in message
    assert "demo" in message


def test_bad_combination_names_the_fix():
    with pytest.raises(ConfigError, match="use_gpu"):
        load_config("demo", ["train.bf16=true"])


def test_fusion_paths_need_two_folders():
    with pytest.raises(ConfigError, match="fusion.paths"):
        load_config("demo", ["fusion.candidates=paths", "fusion.paths=[runs/a]"])
    cfg = load_config("demo", ["fusion.candidates=paths", "fusion.paths=[runs/a,runs/b]"])
    assert cfg.fusion.paths == ["runs/a", "runs/b"]
    assert "paths" not in cfg.fusion.method_knobs()


def test_cli_exits_with_the_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_cli(["--config", "demo", "sampler.mode=sometimes"])
    assert exit_info.value.code == 2
    assert "sampler.mode" in capsys.readouterr().err


def test_presets_open_with_the_command_that_runs_them():
    for path in CONFIG_DIR.glob("*.yaml"):
        first = path.read_text().splitlines()[:4]
        assert any("python -m" in line for line in first), path


def test_objective_and_tune_space_are_replaced_whole_not_merged_key_by_key(tmp_path):
    """The presets weigh TREC-QA train into the objective; an override that names only STS-B dev
    ranks on STS-B dev alone, and a preset's own sweep space drops its base preset's keys."""
    assert "dev:trecqa-train" in load_config("smoke").train.objective
    cfg = load_config("smoke", ["train.objective={dev_sts_spearman: 1.0}"])
    assert cfg.train.objective == {"dev_sts_spearman": 1.0}
    # one entry named on the command line or by a trial changes that entry and keeps the rest
    preset = load_config("smoke").train.objective
    one = load_config("smoke", ["train.objective.dev_sts_spearman=2.0"])
    assert one.train.objective == {**preset, "dev_sts_spearman": 2.0}
    assert key_origin(one, "train.objective.dev_sts_spearman") == "set on the command line"
    trial = with_overrides(load_config("smoke"), {"train.objective.dev:trecqa-train": 0.5})
    assert trial.train.objective == {**preset, "dev:trecqa-train": 0.5}
    (tmp_path / "parent.yaml").write_text(
        f"base: {CONFIG_DIR / 'smoke'}\ntune: {{space: {{train.lr: {{loguniform: [1.0e-5, 1.0e-4]}}}}}}\n"
    )
    (tmp_path / "child.yaml").write_text(
        "base: parent\ntune: {space: {loss.w_pro: {uniform: [0.1, 1.0]}}}\n"
    )
    assert load_config(tmp_path / "child.yaml").tune.space == {
        "loss.w_pro": {"uniform": [0.1, 1.0]}
    }


def test_benchmark_metrics_are_what_the_ir_scorer_returns():
    qrels = {"q": {"d1": 1}}
    assert set(ir_metrics(qrels, {"q": {"d1": 0.9, "d2": 0.1}})) == set(BENCHMARK_METRICS["ir"])
