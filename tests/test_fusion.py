"""Fusion: each method's defining identity on small safetensors folders, the streaming loop's output
folder (copied files, atomic write, clear errors), greedy soup, dev-only selection and the Ray task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.fusion import fuse, fuse_and_select, greedy_soup
from pipeline.fusion.delta import delta_merge, delta_weights
from pipeline.fusion.registry import METHODS, MethodSpec
from pipeline.fusion.stream import NonFiniteWeights, check_finite
from pipeline.fusion.ties import ties_merge

SHAPES = {"emb.weight": (6, 4), "layer.weight": (4, 4), "layer.bias": (4,)}


def write_ckpt(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A sentence-transformers-like folder: weights plus the files fusion must copy."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text('{"hidden_size": 4}\n')
    (folder / "tokenizer.json").write_text('{"vocab": ["a"]}\n')
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
    return folder


def random_tensors(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: scale * torch.randn(shape, generator=gen) for name, shape in SHAPES.items()}


def read(folder: str | Path) -> dict[str, torch.Tensor]:
    with safe_open(Path(folder) / "model.safetensors", framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


@pytest.fixture()
def base(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = random_tensors(0)
    tensors["position_ids"] = torch.arange(6).unsqueeze(0)
    tensors["half.weight"] = torch.randn(3, 2).half()
    return write_ckpt(tmp_path / "base", tensors), tensors


def finetuned(
    tmp_path: Path, base_tensors: dict, name: str, seed: int, scale: float = 0.1
) -> tuple[Path, dict[str, torch.Tensor]]:
    """θ_k = θ_0 + scale·noise on float tensors; position ids changed to check they come from the base."""
    noise = random_tensors(seed, scale)
    tensors = {
        key: value + noise[key] if key in noise else value.clone()
        for key, value in base_tensors.items()
    }
    tensors["position_ids"] = tensors["position_ids"] + 100
    return write_ckpt(tmp_path / name, tensors), tensors


IDENTITY_CASES = [
    ("soup", {}),
    ("delta", {"power": 1.0, "granularity": "element", "normalize": "tensor"}),
    ("delta", {"power": 2.0, "granularity": "tensor", "normalize": "global"}),
    ("delta", {"power": 4.0, "granularity": "element", "normalize": "none"}),
    ("task_arithmetic", {"lam": 1 / 3}),
    ("ties", {"density": 1.0}),
]


@pytest.mark.parametrize(("method", "knobs"), IDENTITY_CASES)
def test_identical_checkpoints_fuse_to_themselves(tmp_path, base, method, knobs):
    base_dir, base_tensors = base
    cand, cand_tensors = finetuned(tmp_path, base_tensors, "a", seed=1)
    out = fuse(base_dir, [cand, cand, cand], tmp_path / "out", method, **knobs)
    fused = read(out)
    assert set(fused) == set(base_tensors)
    for name in SHAPES:
        torch.testing.assert_close(fused[name], cand_tensors[name], rtol=0, atol=1e-6)
    assert fused["half.weight"].dtype == torch.float16
    torch.testing.assert_close(fused["half.weight"], base_tensors["half.weight"])
    assert torch.equal(fused["position_ids"], base_tensors["position_ids"])  # non-float: the base's


@pytest.mark.parametrize("normalize", ["none", "tensor", "global"])
@pytest.mark.parametrize("granularity", ["element", "tensor"])
def test_delta_with_one_checkpoint_returns_it(tmp_path, base, granularity, normalize):
    base_dir, base_tensors = base
    cand, cand_tensors = finetuned(tmp_path, base_tensors, "a", seed=1)
    knobs = {"power": 2.0, "granularity": granularity, "normalize": normalize}
    fused = read(fuse(base_dir, [cand], tmp_path / "out", "delta", **knobs))
    for name in SHAPES:
        torch.testing.assert_close(fused[name], cand_tensors[name], rtol=0, atol=1e-6)


def test_soup_is_the_arithmetic_mean_and_delta_power_zero_is_the_soup(tmp_path, base):
    base_dir, base_tensors = base
    cands = [
        finetuned(tmp_path, base_tensors, f"c{k}", seed=k + 1, scale=0.1 * (k + 1))
        for k in range(3)
    ]
    soup = read(fuse(base_dir, [c for c, _ in cands], tmp_path / "soup", "soup"))
    delta0 = read(
        fuse(base_dir, [c for c, _ in cands], tmp_path / "d0", "delta", power=0.0, normalize="none")
    )
    for name in SHAPES:
        mean = torch.stack([t[name] for _, t in cands]).mean(0)
        torch.testing.assert_close(soup[name], mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(delta0[name], soup[name], rtol=0, atol=1e-6)


def test_ties_on_a_hand_made_example():
    base = torch.tensor([0.5, -0.5, 1.0, 0.0, 2.0])
    deltas = [
        torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]),  # kept (top 3 by |δ|): [1, -2, 0, 0, 3]
        torch.tensor([2.0, 1.0, -0.1, -1.5, -0.5]),  # kept: [2, 1, 0, -1.5, 0]
        torch.tensor([-4.0, 0.5, 0.2, 2.5, 0.3]),  # kept: [-4, 0.5, 0, 2.5, 0]
    ]
    # summed kept: [-1, -0.5, 0, 1, 3] -> elected signs [-, -, 0, +, +]
    # agreeing kept values: [-4], [-2], none, [2.5], [3] -> disjoint mean [-4, -2, 0, 2.5, 3]
    expected = base + torch.tensor([-4.0, -2.0, 0.0, 2.5, 3.0])
    torch.testing.assert_close(ties_merge(base, deltas, density=0.6), expected)
    torch.testing.assert_close(
        ties_merge(base, deltas, density=0.6, lam=0.5),
        base + 0.5 * torch.tensor([-4.0, -2.0, 0.0, 2.5, 3.0]),
    )
    # density 1 keeps everything: element 0 sums to -1 -> only -4 agrees
    assert ties_merge(base, deltas, density=1.0)[0].item() == pytest.approx(0.5 - 4.0)


def test_delta_normalisation_stops_a_larger_checkpoint_dominating():
    gen = torch.Generator().manual_seed(0)
    small = 0.01 * torch.randn(2000, generator=gen)
    large = 10 * 0.01 * torch.randn(2000, generator=gen)  # the ×10 checkpoint (METHOD-NOTES)
    raw = delta_weights([small, large], power=1.0, normalize="none")
    assert raw[1].mean() > 0.8  # unnormalised: the larger checkpoint wins most elements
    unscaled = [small, large / 10]
    for normalize, scales, scales_unscaled in [
        ("tensor", None, None),
        ("global", [0.008, 0.08], [0.008, 0.008]),
    ]:
        w = delta_weights([small, large], normalize=normalize, scales=scales)
        w_ref = delta_weights(unscaled, normalize=normalize, scales=scales_unscaled)
        torch.testing.assert_close(w[1], w_ref[1])  # invariant to a checkpoint's overall scale
        assert 0.4 < w[1].mean() < 0.6
        torch.testing.assert_close(w[0] + w[1], torch.ones(2000))


def test_global_normalisation_uses_whole_checkpoint_scales(tmp_path, base):
    base_dir, base_tensors = base
    a, ta = finetuned(tmp_path, base_tensors, "a", seed=1, scale=0.01)
    b, tb = finetuned(tmp_path, base_tensors, "b", seed=2, scale=0.1)
    fused = read(fuse(base_dir, [a, b], tmp_path / "out", "delta", power=2.0, normalize="global"))
    floats = [*SHAPES, "half.weight"]

    def scale(t: dict) -> float:
        diffs = [(t[n].float() - base_tensors[n].float()).abs() for n in floats]
        return float(sum(d.sum() for d in diffs) / sum(d.numel() for d in diffs))

    for name in SHAPES:
        theta0 = base_tensors[name]
        expected = delta_merge(
            theta0,
            [ta[name] - theta0, tb[name] - theta0],
            power=2.0,
            normalize="global",
            scales=[scale(ta), scale(tb)],
        )
        torch.testing.assert_close(fused[name], expected)


def test_output_folder_copies_non_weight_files(tmp_path, base):
    base_dir, base_tensors = base
    cand, _ = finetuned(tmp_path, base_tensors, "a", seed=1)
    out = Path(fuse(base_dir, [cand], tmp_path / "out", "soup"))
    listing = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert listing == sorted(p.relative_to(base_dir).as_posix() for p in base_dir.rglob("*"))
    for rel in ["config.json", "tokenizer.json", "1_Pooling/config.json"]:
        assert (out / rel).read_text() == (base_dir / rel).read_text()
    with safe_open(out / "model.safetensors", framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_sharded_base_is_read_and_written_as_one_file(tmp_path, base):
    base_dir, base_tensors = base
    sharded = tmp_path / "sharded"
    write_ckpt(sharded, {})
    (sharded / "model.safetensors").unlink()
    names = sorted(base_tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:2],
        "model-00002-of-00002.safetensors": names[2:],
    }
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: base_tensors[k] for k in keys}, sharded / shard)
        weight_map.update(dict.fromkeys(keys, shard))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cand, cand_tensors = finetuned(tmp_path, base_tensors, "a", seed=1)
    out = Path(fuse(sharded, [cand], tmp_path / "out", "task_arithmetic", lam=1.0))
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]
    for name in SHAPES:
        torch.testing.assert_close(read(out)[name], cand_tensors[name], rtol=0, atol=1e-6)


def test_mismatched_checkpoints_fail_naming_the_tensor(tmp_path, base):
    base_dir, base_tensors = base
    wrong = dict(base_tensors, **{"layer.bias": torch.zeros(5)})
    cand = write_ckpt(tmp_path / "wrong", wrong)
    with pytest.raises(ValueError, match=r"'layer.bias'.*\[5\].*\[4\]"):
        fuse(base_dir, [cand], tmp_path / "out", "soup")
    missing = write_ckpt(
        tmp_path / "missing", {k: v for k, v in base_tensors.items() if k != "emb.weight"}
    )
    with pytest.raises(ValueError, match="'emb.weight' of the base is missing"):
        fuse(base_dir, [missing], tmp_path / "out", "soup")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="'greedy_soup' is a search.*greedy.greedy_soup"):
        fuse(base_dir, [cand], tmp_path / "out", "greedy_soup")
    with pytest.raises(ValueError, match=r"unknown fusion method 'nope'; known: \['delta'"):
        fuse(base_dir, [cand], tmp_path / "out", "nope")
    with pytest.raises(TypeError, match="power"):
        fuse(base_dir, [cand], tmp_path / "out", "soup", power=2.0)
    with pytest.raises(ValueError, match="one of the inputs"):
        fuse(base_dir, [cand], base_dir, "soup")


def test_failed_write_leaves_the_output_complete_or_absent(tmp_path, base, monkeypatch):
    base_dir, base_tensors = base
    cand, _ = finetuned(tmp_path, base_tensors, "a", seed=1)
    calls = []

    def failing(base_t, deltas):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return base_t

    monkeypatch.setitem(METHODS, "soup", MethodSpec("soup", failing))
    with pytest.raises(OSError, match="disk full"):
        fuse(base_dir, [cand], tmp_path / "out", "soup")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    previous = read(fuse(base_dir, [cand], tmp_path / "out", "soup"))
    calls.clear()
    monkeypatch.setitem(METHODS, "soup", MethodSpec("soup", failing))
    with pytest.raises(OSError, match="disk full"):
        fuse(base_dir, [cand], tmp_path / "out", "soup")
    for name, tensor in read(tmp_path / "out").items():  # the earlier complete output is intact
        assert torch.equal(tensor, previous[name])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def constant_ckpt(tmp_path: Path, name: str, value: float) -> Path:
    return write_ckpt(tmp_path / name, {n: torch.full(s, value) for n, s in SHAPES.items()})


def test_greedy_soup_adds_only_what_improves_dev(tmp_path):
    base_dir = constant_ckpt(tmp_path, "base", 0.0)
    c1, c2, c3 = (constant_ckpt(tmp_path, n, v) for n, v in [("c1", 1.0), ("c2", 3.0), ("c3", 0.0)])
    scored = []

    def score(folder: str) -> float:  # dev score: closeness of the weights' mean to 1.8
        scored.append(Path(folder).name)
        return -abs(read(folder)["emb.weight"].mean().item() - 1.8)

    result = greedy_soup(base_dir, [c3, c2, c1], tmp_path / "greedy", score)
    # ranked c1 (-0.8), c2 (-1.2), c3 (-1.8); {c1,c2} = 2.0 (-0.2) kept; {c1,c2,c3} = 1.33 skipped
    assert result.members == [str(c1), str(c2)]
    assert result.score == pytest.approx(-0.2)
    assert read(result.folder)["emb.weight"].mean().item() == pytest.approx(2.0)
    assert scored == ["c3", "c2", "c1", ".greedy.trial", ".greedy.trial"]
    assert not (tmp_path / ".greedy.trial").exists()


def test_fuse_and_select_scores_every_variant_and_keeps_the_best(tmp_path):
    base_dir = constant_ckpt(tmp_path, "base", 0.0)
    cands = [constant_ckpt(tmp_path, n, v) for n, v in [("c1", 1.0), ("c2", 3.0)]]

    def score(folder: str) -> float:
        return -abs(read(folder)["emb.weight"].mean().item() - 2.8)

    best, scores, folder = fuse_and_select(
        base_dir, cands, tmp_path / "fuse", score_fn=score, ta_lambda=[0.5, 0.7], ties_density=1.0
    )
    assert list(scores) == [
        "delta(power=1.0, granularity=element, normalize=tensor)",
        "delta(power=2.0, granularity=element, normalize=tensor)",
        "soup",
        "greedy_soup",
        "task_arithmetic(lam=0.5)",
        "task_arithmetic(lam=0.7)",
        "ties(density=1.0)",
    ]
    assert best == "task_arithmetic(lam=0.7)"  # 0.7 * 4 = 2.8
    assert folder == str(tmp_path / "fuse" / "task_arithmetic")
    assert read(folder)["emb.weight"].mean().item() == pytest.approx(2.8)
    summary = json.loads((tmp_path / "fuse" / "selection.json").read_text())
    assert summary["best"] == best and summary["scores"] == pytest.approx(scores)
    assert set(summary["folders"]) == {"delta", "soup", "greedy_soup", "task_arithmetic", "ties"}
    assert all(Path(f).is_dir() for f in summary["folders"].values())
    assert summary["candidate_scores"] == pytest.approx({str(cands[0]): -1.8, str(cands[1]): -0.2})
    assert sorted(p.name for p in (tmp_path / "fuse").iterdir()) == sorted(
        [*summary["folders"], "selection.json"]
    )


def test_fusion_config_knobs_are_the_method_files_declarations():
    """``FusionConfig``'s knob fields, defaults and checks come from the methods' specs, and its
    ``method_knobs()`` are the keywords ``fuse_and_select`` takes and each spec's grid reads."""
    from pipeline.config import ConfigError, FusionConfig, load_config
    from pipeline.fusion.registry import knobs

    cfg = FusionConfig()
    assert set(cfg.method_knobs()) == {"methods", *knobs()}
    assert cfg.methods == ["delta", "soup", "greedy_soup", "task_arithmetic", "ties"]
    assert cfg.delta_power == [1.0, 2.0] and cfg.ta_lambda == [0.5, 0.7, 1.0]
    assert cfg.delta_granularity == "element" and cfg.delta_normalize == "tensor"
    assert cfg.ties_density == 0.2
    assert METHODS["delta"].variants(cfg.method_knobs()) == [
        {"power": 1.0, "granularity": "element", "normalize": "tensor"},
        {"power": 2.0, "granularity": "element", "normalize": "tensor"},
    ]
    assert METHODS["ties"].variants({"ties_density": 1}) == [{"density": 1.0}]
    assert METHODS["soup"].variants({}) == [{}]
    with pytest.raises(ConfigError, match=r"fusion.methods.*unknown fusion method 'nope'"):
        load_config("demo", ["fusion.methods=[soup,nope]"])
    with pytest.raises(ConfigError, match="fusion.ties_density"):
        load_config("demo", ["fusion.ties_density=1.5"])
    with pytest.raises(ConfigError, match="fusion.delta_normalize"):
        load_config("demo", ["fusion.delta_normalize=max"])
    with pytest.raises(TypeError, match="unknown fusion knobs"):
        fuse_and_select("base", [], "out", score_fn=len, ta_lamda=[0.5])


def test_ray_task_matches_local(tmp_path, base, ray_session):
    from pipeline.fusion.remote import fuse_remote

    base_dir, base_tensors = base
    cands = [finetuned(tmp_path, base_tensors, f"c{k}", seed=k + 1)[0] for k in range(2)]
    local = read(fuse(base_dir, cands, tmp_path / "local", "delta", power=2.0))
    remote = ray_session.get(
        fuse_remote.remote(base_dir, cands, tmp_path / "remote", "delta", power=2.0)
    )
    assert remote == str(tmp_path / "remote")
    for name, tensor in read(remote).items():
        assert torch.equal(tensor, local[name])


def test_nonfinite_fused_tensor_is_refused_and_never_written(tmp_path, base):
    base_dir, base_tensors = base
    good, _ = finetuned(tmp_path, base_tensors, "good", seed=1)
    bad_tensors = {k: v.clone() for k, v in base_tensors.items()}
    bad_tensors["layer.weight"][0, 0] = float("nan")
    bad = write_ckpt(tmp_path / "bad", bad_tensors)
    with pytest.raises(NonFiniteWeights, match="layer.weight"):
        fuse(base_dir, [good, bad], tmp_path / "fused", "soup")
    assert not (tmp_path / "fused").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fused")] == []
    with pytest.raises(NonFiniteWeights, match=r"bad: tensor 'layer.weight' has 1 NaN/inf"):
        check_finite(bad)
    check_finite(good)


def test_fuse_and_select_refuses_overflowing_variants_and_keeps_the_rest(tmp_path):
    base_dir = constant_ckpt(tmp_path, "base", 0.0)
    cands = [constant_ckpt(tmp_path, n, 1e38) for n in ("c1", "c2")]  # float32 max is 3.4e38

    def score(folder: str) -> float:
        return float(read(folder)["emb.weight"].mean())

    best, scores, _ = fuse_and_select(
        base_dir,
        cands,
        tmp_path / "fuse",
        score_fn=score,
        methods=["soup", "task_arithmetic"],
        ta_lambda=[0.5, 2.0],
    )  # λ = 2: 2 · (1e38 + 1e38) overflows to inf
    assert set(scores) == {"soup", "task_arithmetic(lam=0.5)"} and best == "soup"
    refused = json.loads((tmp_path / "fuse" / "selection.json").read_text())["refused"]
    assert list(refused) == ["task_arithmetic(lam=2.0)"]
    with pytest.raises(NonFiniteWeights, match="every fusion variant"):
        fuse_and_select(
            base_dir,
            cands,
            tmp_path / "fuse2",
            score_fn=score,
            methods=["task_arithmetic"],
            ta_lambda=[2.0],
        )


def test_publish_final_refuses_a_model_with_nan_weights(tmp_path):
    from pipeline.stages.register import publish_final

    bad = constant_ckpt(tmp_path, "chosen", float("inf"))
    with pytest.raises(NonFiniteWeights, match="chosen"):
        publish_final(str(bad), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "final").exists()


def test_weights_digest_sees_values_not_file_layout(tmp_path, base):
    from pipeline.fusion.stream import weights_digest

    folder, tensors = base
    again = tmp_path / "again"
    again.mkdir()
    save_file(
        {k: v.contiguous() for k, v in reversed(tensors.items())},
        again / "model.safetensors",
        metadata={"written": "elsewhere"},
    )
    assert (again / "model.safetensors").read_bytes() != (folder / "model.safetensors").read_bytes()
    assert weights_digest(again) == weights_digest(folder)
    nudged = {**tensors, "layer.bias": tensors["layer.bias"] + 1e-6}
    assert weights_digest(write_ckpt(tmp_path / "nudged", nudged)) != weights_digest(folder)
    signed = {**tensors, "layer.bias": torch.tensor([0.0, -0.0, 1.0, 2.0])}
    unsigned = {**tensors, "layer.bias": torch.tensor([0.0, 0.0, 1.0, 2.0])}
    assert weights_digest(write_ckpt(tmp_path / "signed", signed)) == weights_digest(
        write_ckpt(tmp_path / "unsigned", unsigned)
    )


def test_greedy_soup_of_one_is_that_candidate_bit_for_bit(tmp_path, base):
    from pipeline.fusion.stream import weights_digest

    base_dir, base_tensors = base
    c1, _ = finetuned(tmp_path, base_tensors, "c1", seed=1)
    c2, _ = finetuned(tmp_path, base_tensors, "c2", seed=2)
    scores = {str(c1): 1.0, str(c2): 0.0}
    never = lambda folder: -1.0  # noqa: E731  (the soup of both scores lower)
    result = greedy_soup(base_dir, [c1, c2], tmp_path / "greedy", never, candidate_scores=scores)
    assert result.members == [str(c1)]
    assert weights_digest(result.folder) == weights_digest(c1)


def test_fuse_and_select_reuses_known_and_repeated_scores(tmp_path):
    base_dir = constant_ckpt(tmp_path, "base", 0.0)
    cands = [constant_ckpt(tmp_path, n, v) for n, v in [("c1", 1.0), ("c2", 3.0)]]
    scored = []

    def score(folder: str) -> float:
        scored.append(Path(folder).name)
        return -abs(read(folder)["emb.weight"].mean().item() - 2.8)

    _, scores, _ = fuse_and_select(
        base_dir,
        cands,
        tmp_path / "fuse",
        score_fn=score,
        methods=["soup", "greedy_soup", "task_arithmetic"],
        ta_lambda=[0.5],
        known_scores={str(cands[0]): -1.8},  # c1's score from training
    )
    # c1 is known; c2 is scored once; greedy's {c2, c1} soup has the soup's weights (2.0), and
    # task arithmetic λ=0.5 (0.5 * 4 = 2.0) too: one scoring for all three
    assert scored == ["c2", ".trial"]
    assert scores == pytest.approx(
        {"soup": -0.8, "greedy_soup": -0.2, "task_arithmetic(lam=0.5)": -0.8}
    )
    summary = json.loads((tmp_path / "fuse" / "selection.json").read_text())
    assert summary["candidate_scores"] == pytest.approx({str(cands[0]): -1.8, str(cands[1]): -0.2})
