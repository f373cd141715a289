"""Extra dev benchmarks in the objective (``train.objective`` key ``dev:<benchmark>``): the config
refuses what must not enter it, the driver loads what it names, and in-loop dev scoring ranks on it."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config, objective_benchmarks
from pipeline.eval.benchmarks import evaluate_ir, load_ir
from pipeline.model.encoder import Encoder
from pipeline.train.dev import evaluate_dev
from pipeline.train.driver import dev_data

TRECQA_TRAIN = (
    "{name: trecqa-train, kind: ir, format: trecqa, path: trecqa-wang/train.csv, limit: 4}"
)
STSB_DEV = "{name: stsb-dev, kind: sts, format: stsb, path: stsbenchmark/sts-dev.csv, limit: 40}"
TRECQA_DEV = (
    "{name: trecqa-dev, kind: ir, format: trecqa, path: trecqa-wang/dev.csv, held_out: true}"
)


def _config(tmp_path, objective: str, benchmarks: str):
    return load_config(
        "smoke",
        [
            f"run.root={tmp_path}",
            f"train.objective={objective}",
            f"eval.benchmarks=[{benchmarks}]",
        ],
    )


def test_a_held_out_benchmark_is_refused_in_the_objective(tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, '{"dev:trecqa-dev": 1.0}', f"{STSB_DEV}, {TRECQA_DEV}")
    message = str(err.value)
    assert "dev:trecqa-dev" in message and "held_out: true" in message


def test_an_unknown_benchmark_is_refused_with_the_known_names(tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, '{"dev:trec-qa": 1.0}', STSB_DEV)
    assert "'trec-qa'" in str(err.value) and "stsb-dev" in str(err.value)


def test_rows_a_source_trains_on_are_refused_and_the_rest_of_its_file_accepted(tmp_path):
    source = "{name: trecqa, task: ir, format: trecqa, path: trecqa-wang/train.csv, limit: 57}"

    def config(skip: int):
        tail = (
            f"{{name: tail, kind: ir, format: trecqa, path: trecqa-wang/train.csv, skip: {skip}}}"
        )
        overrides = [f"run.root={tmp_path}", f"data.sources=[{source}]"]
        overrides += ['train.objective={"dev:tail": 1.0}', f"eval.benchmarks=[{tail}]"]
        return load_config("smoke", overrides)

    assert config(57).eval.benchmarks[0].skip == 57
    with pytest.raises(ConfigError) as err:
        config(50)
    assert "rows 50..end" in str(err.value) and "rows 0..57" in str(err.value)


def test_a_benchmark_on_a_training_file_is_refused(tmp_path):
    trained = "{name: stsb-train, kind: sts, format: stsb, path: stsbenchmark/sts-train.csv}"
    with pytest.raises(ConfigError, match="trains on"):
        _config(tmp_path, '{"dev:stsb-train": 1.0}', f"{STSB_DEV}, {trained}")


def test_a_key_that_is_neither_a_metric_nor_a_benchmark_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.objective"):
        _config(tmp_path, "{dev_trecqa: 1.0}", STSB_DEV)


def test_the_objective_names_its_dev_benchmarks_and_zero_weights_drop_out(tmp_path):
    cfg = _config(
        tmp_path,
        '{"dev:trecqa-train": 0.25, "dev:stsb-dev": 0.0}',
        f"{STSB_DEV}, {TRECQA_TRAIN}",
    )
    assert objective_benchmarks(cfg.train.objective) == ["trecqa-train"]


def test_dev_scoring_ranks_on_the_extra_benchmark(tmp_path, tiny_model_path):
    cfg = _config(
        tmp_path,
        '{"dev_sts_spearman": 0.0, "dev_ir_ndcg@10": 0.0, "dev:trecqa-train": 1.0}',
        f"{STSB_DEV}, {TRECQA_TRAIN}",
    )
    dev = dev_data(cfg)
    assert dev.ir is None  # nothing mined in this run directory
    assert list(dev.extra) == ["dev:trecqa-train"]
    assert len(dev.extra["dev:trecqa-train"].queries) == 4

    encoder = Encoder.from_pretrained(tiny_model_path, device="cpu")
    text = cfg.model.text_settings()
    scores = evaluate_dev(encoder, dev, text, objective=cfg.train.objective)
    # the extra set is scored as the evaluate stage scores the same benchmark
    bench = next(b for b in cfg.eval.benchmarks if b.name == "trecqa-train")
    alone = evaluate_ir(
        encoder,
        load_ir(bench, cfg.data.root, cfg.run.dir),
        max_length_query=text.max_length_query,
        max_length_passage=text.max_length_passage,
    )
    assert scores["dev:trecqa-train"] == pytest.approx(alone["ndcg@10"])
    # only the extra set carries weight, and the in-domain mean leaves it out
    assert scores["dev_objective"] == pytest.approx(scores["dev:trecqa-train"])
    assert scores["dev_mean"] == pytest.approx(scores["dev_sts_spearman"])


def test_an_unknown_metric_of_a_benchmark_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, '{"dev:trecqa-train:spearman": 1.0}', f"{STSB_DEV}, {TRECQA_TRAIN}")
    message = str(err.value)
    assert "dev:trecqa-train:spearman" in message and "mrr@10" in message


def test_metric_keys_name_their_benchmark_once(tmp_path):
    cfg = _config(
        tmp_path,
        '{"dev:trecqa-train": 1.0, "dev:trecqa-train:map": 1.0, "dev:trecqa-train:mrr@10": 1.0}',
        f"{STSB_DEV}, {TRECQA_TRAIN}",
    )
    assert objective_benchmarks(cfg.train.objective) == ["trecqa-train"]
    assert list(dev_data(cfg).extra) == ["dev:trecqa-train"]


def test_dev_scoring_weighs_each_named_metric_of_the_extra_benchmark(tmp_path, tiny_model_path):
    objective = {
        "dev:trecqa-train": 1.0,
        "dev:trecqa-train:map": 1.0,
        "dev:trecqa-train:mrr@10": 2.0,
    }
    cfg = _config(
        tmp_path,
        '{"dev_sts_spearman": 0.0, "dev_ir_ndcg@10": 0.0, "dev:trecqa-train": 1.0, '
        '"dev:trecqa-train:map": 1.0, "dev:trecqa-train:mrr@10": 2.0}',
        f"{STSB_DEV}, {TRECQA_TRAIN}",
    )
    assert {k: v for k, v in cfg.train.objective.items() if v > 0} == objective
    dev = dev_data(cfg)
    encoder = Encoder.from_pretrained(tiny_model_path, device="cpu")
    text = cfg.model.text_settings()
    scores = evaluate_dev(encoder, dev, text, objective=cfg.train.objective)
    alone = evaluate_ir(
        encoder,
        dev.extra["dev:trecqa-train"],
        max_length_query=text.max_length_query,
        max_length_passage=text.max_length_passage,
    )
    assert scores["dev:trecqa-train"] == pytest.approx(alone["ndcg@10"])
    assert scores["dev:trecqa-train:map"] == pytest.approx(alone["map"])
    assert scores["dev:trecqa-train:mrr@10"] == pytest.approx(alone["mrr@10"])
    expected = (alone["ndcg@10"] + alone["map"] + 2 * alone["mrr@10"]) / 4
    assert scores["dev_objective"] == pytest.approx(expected)
    assert "dev:trecqa-train:recall@100" not in scores  # only what the objective names


def test_a_held_out_benchmark_on_rows_a_source_trains_on_is_refused(tmp_path):
    source = "{name: trecqa, task: ir, format: trecqa, path: trecqa-wang/train.csv, limit: 57}"

    def config(skip: int):
        held = (
            "{name: qa, kind: ir, format: trecqa, path: trecqa-wang/train.csv, "
            f"skip: {skip}, held_out: true}}"
        )
        overrides = [f"run.root={tmp_path}", f"data.sources=[{source}]"]
        overrides += ["train.objective={dev_sts_spearman: 1.0}", f"eval.benchmarks=[{held}]"]
        return load_config("smoke", overrides)

    assert config(57).eval.benchmarks[0].held_out
    with pytest.raises(ConfigError) as err:
        config(0)
    assert "'qa' is held_out: true" in str(err.value) and "rows 0..57" in str(err.value)
