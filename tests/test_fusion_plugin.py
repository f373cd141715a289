"""A fusion method added as a plug-in: one file declaring its ``SPEC`` plus one ``register`` line, then
run through its selection grid, ``fuse_and_select`` and the streaming writer on a tiny random BERT;
the fused tensors must equal the toy's formula computed here from the checkpoint files."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline.fusion import fuse, fuse_and_select
from pipeline.fusion.registry import METHODS, knobs, register
from pipeline.fusion.spec import Knob, MethodSpec

# The whole method: written below as a file of its own, importing nothing but the spec types.
TOY_METHOD = '''
"""Toy fusion: θ = θ_0 + scale · max_k δ_k + shift, the max taken element by element."""

from pipeline.fusion.spec import Knob, MethodSpec


def toy_merge(base, deltas, *, scale=1.0, shift=0.0):
    """θ_0 + scale · max_k δ_k + shift."""
    top = deltas[0]
    for d in deltas[1:]:
        top = top.maximum(d)
    return base + scale * top + shift


SPEC = MethodSpec(
    name="toy_max",
    fn=toy_merge,
    knobs=(
        Knob("scale", "toy_scale", float, default=(0.5, 1.0), grid=True),
        Knob("shift", "toy_shift", float, default=0.0),
    ),
)
'''

PROBE = "encoder.layer.0.attention.self.query.weight"  # the tensor the toy dev score reads


@pytest.fixture()
def toy_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The toy method file in a folder on ``sys.path``, registered with one line (removed after)."""
    (tmp_path / "toy_max.py").write_text(TOY_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = importlib.import_module("toy_max").SPEC
    register(spec)  # the one registry line
    yield spec
    del METHODS["toy_max"]
    sys.modules.pop("toy_max")


@pytest.fixture()
def checkpoints(tmp_path: Path, tiny_model_path: str) -> tuple[Path, list[Path]]:
    """The tiny random BERT as θ_0 and three candidates θ_k = θ_0 + 0.01·noise (weights only)."""
    theta0 = load_file(Path(tiny_model_path) / "model.safetensors")
    candidates = []
    for k in range(3):
        gen = torch.Generator().manual_seed(k)
        folder = tmp_path / f"cand{k}"
        folder.mkdir()
        noisy = {n: t + 0.01 * torch.randn(t.shape, generator=gen) for n, t in theta0.items()}
        save_file(noisy, folder / "model.safetensors")
        candidates.append(folder)
    return Path(tiny_model_path), candidates


def toy_formula(base: Path, candidates: list[Path], scale: float, shift: float) -> dict:
    """θ_0 + scale · max_k (θ_k − θ_0) + shift for every tensor, from the files."""
    theta0 = load_file(base / "model.safetensors")
    thetas = [load_file(c / "model.safetensors") for c in candidates]
    return {
        name: t0 + scale * torch.stack([t[name] - t0 for t in thetas]).amax(0) + shift
        for name, t0 in theta0.items()
    }


def test_the_toy_grid_comes_from_its_file(toy_method):
    assert knobs()["toy_scale"] is toy_method.knobs[0]
    assert toy_method.variants({}) == [{"scale": 0.5, "shift": 0.0}, {"scale": 1.0, "shift": 0.0}]
    settings = {"toy_scale": [2, 0.5], "toy_shift": 0.25, "delta_power": [3.0]}
    assert toy_method.variants(settings) == [
        {"scale": 2.0, "shift": 0.25},
        {"scale": 0.5, "shift": 0.25},
    ]
    assert toy_method.dev_scorings(3, ["toy_max"], settings) == 2
    with pytest.raises(ValueError, match="registered twice"):
        register(toy_method)
    clash = Knob("lam", "toy_scale", float, default=(1.0,), grid=True)
    with pytest.raises(ValueError, match="'toy_scale' is declared differently"):
        register(MethodSpec(name="other", fn=toy_method.fn, knobs=(clash,)))


def test_the_streaming_writer_runs_the_toy(tmp_path, toy_method, checkpoints):
    base, candidates = checkpoints
    out = Path(fuse(base, candidates, tmp_path / "fused", "toy_max", scale=2.0, shift=0.25))
    fused = load_file(out / "model.safetensors")
    expected = toy_formula(base, candidates, 2.0, 0.25)
    assert set(fused) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(fused[name], tensor, rtol=0, atol=0)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in base.iterdir())
    with pytest.raises(TypeError, match="power"):
        fuse(base, candidates, tmp_path / "bad", "toy_max", power=2.0)


def test_selection_tries_the_toy_grid_and_keeps_its_best(tmp_path, toy_method, checkpoints):
    base, candidates = checkpoints
    target = toy_formula(base, candidates, 2.0, 0.25)[PROBE]

    def score(folder: str) -> float:  # dev score: closeness to the scale-2 toy fusion
        with safe_open(Path(folder) / "model.safetensors", framework="pt") as handle:
            return -float((handle.get_tensor(PROBE) - target).abs().mean())

    best, scores, folder = fuse_and_select(
        base,
        candidates,
        tmp_path / "fuse",
        score_fn=score,
        methods=["soup", "toy_max"],
        toy_scale=[0.5, 2.0],
        toy_shift=0.25,
    )
    assert list(scores) == [
        "soup",
        "toy_max(scale=0.5, shift=0.25)",
        "toy_max(scale=2.0, shift=0.25)",
    ]
    assert best == "toy_max(scale=2.0, shift=0.25)" and scores[best] == 0.0
    assert folder == str(tmp_path / "fuse" / "toy_max")
    fused = load_file(Path(folder) / "model.safetensors")
    for name, tensor in toy_formula(base, candidates, 2.0, 0.25).items():
        torch.testing.assert_close(fused[name], tensor, rtol=0, atol=0)
    selection = json.loads((tmp_path / "fuse" / "selection.json").read_text())
    assert selection["best"] == best and set(selection["folders"]) == {"soup", "toy_max"}


def test_the_config_reads_the_registry_without_loading_torch():
    """``pipeline.config`` builds ``FusionConfig`` from the method files' specs at import, so they
    and the registry must stay free of torch (the config also runs where a job only parses it)."""
    code = (
        "import sys; from pipeline.config import FusionConfig; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "print(sorted(FusionConfig.model_fields))"
    )
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "ties_density" in done.stdout
