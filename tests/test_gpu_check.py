"""``bench/gpu_check.py`` on the CPU with tiny sizes: every check passes, none is missing, and the run
imports nothing the GPU machine lacks (Ray, MLflow, pyarrow, the pydantic config)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECKS = {"train_steps", "checkpoint", "eval_vs_cpu", "fusion", "fp32_on_disk", "imports"}


def test_gpu_check_passes_on_cpu_quick(tmp_path):
    out = tmp_path / "F.json"
    argv = ["--device", "cpu", "--quick", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert set(checks) == CHECKS
    failed = {name: row["detail"] for name, row in checks.items() if not row["passed"]}
    assert not failed, failed
    assert report["passed"]
    assert checks["imports"]["loaded"] == []
    assert {"ray", "mlflow", "pyarrow"} <= set(checks["imports"]["forbidden"])
    assert checks["eval_vs_cpu"]["reference"] == "the CPU itself (cpu vs cpu)"
    assert report["environment"]["torch"] and report["environment"]["name"]
    for row in checks.values():
        assert row["seconds"] >= 0
    assert "| train_steps | pass |" in result.stdout


def test_gpu_step_and_timing_import_nothing_the_gpu_machine_lacks():
    """Nor sentence-transformers: ``bench.gpu_step`` imports it only to build its trainer."""
    code = (
        "import sys; import bench.gpu_step, bench._timing; "
        "loaded = [m for m in ('ray', 'mlflow', 'pyarrow', 'pipeline.config', "
        "'sentence_transformers') if m in sys.modules]; assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_gpu_check_bundle_holds_the_same_slices_and_a_float16_model(
    tmp_path, data_root, tiny_model_path
):
    """``--bundle``: what a GPU machine without the packaged model and the data folder is sent."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from bench import gpu_check
    from pipeline.fusion.stream import Checkpoint
    from pipeline.model.encoder import Encoder

    sizes = gpu_check.QUICK_SIZES
    gpu_check.write_bundle(tmp_path, tiny_model_path, data_root, sizes)
    bundled = tmp_path / "data"
    assert gpu_check.read_scifact(bundled, sizes.ir_queries, sizes.ir_docs) == (
        gpu_check.read_scifact(data_root, sizes.ir_queries, sizes.ir_docs)
    )
    *pairs, gold = gpu_check.read_sts(bundled, "dev", sizes.sts_pairs)
    *expected_pairs, expected_gold = gpu_check.read_sts(data_root, "dev", sizes.sts_pairs)
    assert pairs == expected_pairs and np.array_equal(gold, expected_gold)
    ckpt = Checkpoint(tmp_path / "model")
    assert {ckpt.spec(name)[0] for name in ckpt.names} == {"F16"}
    original = Encoder.from_pretrained(tiny_model_path, device="cpu").state_dict()
    for name, tensor in (
        Encoder.from_pretrained(tmp_path / "model", device="cpu").state_dict().items()
    ):
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32
            torch.testing.assert_close(tensor, original[name], rtol=1e-3, atol=1e-4)
