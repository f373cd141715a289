"""``python -m jobs.fuse``: the fuse stage alone, on the trained modes or on named model folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import jobs.fuse
import jobs.mine
import jobs.prepare
from pipeline.config import load_config
from pipeline.stages.train import base_model


def perturbed_copy(base: str, out: Path, seed: int) -> str:
    """The base folder with every float tensor moved by seeded noise: a stand-in checkpoint."""
    shutil.copytree(base, out)
    tensors = load_file(out / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    moved = {
        name: t + 0.02 * torch.randn(t.shape, generator=gen) if t.is_floating_point() else t
        for name, t in tensors.items()
    }
    save_file(moved, out / "model.safetensors")
    return str(out)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_root, ray_session):
    """A smoke run directory with its prepared and mined data (the dev sets fusion scores on)."""
    root = tmp_path_factory.mktemp("runs")
    overrides = [f"run.root={root}", f"data.root={data_root}", "run.name=fuse"]
    cfg = load_config("smoke", overrides)
    jobs.prepare.main(cfg)
    jobs.mine.main(cfg)
    return root, overrides


def test_fuse_job_fuses_the_named_folders_and_chooses_on_dev(smoke_run):
    root, overrides = smoke_run
    base = base_model(load_config("smoke", overrides))
    a = perturbed_copy(base, root / "cand-a", seed=1)
    b = perturbed_copy(base, root / "cand-b", seed=2)
    # a dev score recorded by another run (other dev data): the job must score the folder again
    (Path(a) / "train_state.json").write_text('{"step": 1, "metrics": {"dev_objective": 999.0}}')
    cfg = load_config(
        "smoke",
        [
            *overrides,
            "fusion.candidates=paths",
            f"fusion.paths=[{a},{b}]",
            "fusion.methods=[soup,delta]",
            "fusion.delta_power=[1.0]",
        ],
    )
    selection = jobs.fuse.main(cfg)
    # both folders scored on dev, the recorded 999 ignored; every variant scored too
    assert set(selection["candidate_scores"]) == {a, b}
    assert selection["candidate_scores"][a] < 100.0
    assert set(selection["scores"]) == {
        "soup",
        "delta(power=1.0, granularity=element, normalize=tensor)",
    }
    assert selection["best"] == max(selection["scores"], key=selection["scores"].get)
    soup = load_file(Path(selection["folders"]["soup"]) / "model.safetensors")
    ta, tb = load_file(Path(a) / "model.safetensors"), load_file(Path(b) / "model.safetensors")
    for name, fused in soup.items():
        if fused.is_floating_point():
            torch.testing.assert_close(fused, (ta[name] + tb[name]) / 2)


def test_fuse_job_refuses_modes_that_were_not_trained(smoke_run):
    _, overrides = smoke_run
    cfg = load_config("smoke", [*overrides, "fusion.modes=[joint,ir_only]"])
    with pytest.raises(FileNotFoundError, match="no finished joint training"):
        jobs.fuse.main(cfg)
