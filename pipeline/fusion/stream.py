"""The one streaming loop every fusion method runs in: read one tensor name at a time from the base
θ_0 and the K candidates, hand the method ``(θ_0, [δ_1 .. δ_K])`` and write its result straight into the
output file, so peak memory is a few copies of the largest tensor, not K models.

    fuse("runs/x/base", ["runs/x/sts_only", "runs/x/ir_only"], "runs/x/fused", "delta", power=2.0)

A checkpoint is a folder with ``model.safetensors`` (or ``model.safetensors.index.json`` and its
shards). The output folder is a copy of the base folder's other files (config, tokenizer, modules.json,
1_Pooling/, ...) plus one fused ``model.safetensors``; it is built beside ``out_dir`` and renamed into
place, so it is complete or absent. Float tensors are fused in float32 (float64 stays float64) and
written in the base's dtype; other tensors (e.g. position-id buffers) are copied from the base. A fused
tensor with NaN/inf stops the write (``NonFiniteWeights``): such a model is never written.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from pipeline.fusion.registry import get_method

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}
_ITEMSIZE.update({f"{kind}{bits}": bits // 8 for kind in "IU" for bits in (8, 16, 32, 64)})


def _is_root_weight_file(name: str) -> bool:
    return name.endswith((".safetensors", ".safetensors.index.json")) or (
        name.startswith("pytorch_model") and name.endswith((".bin", ".bin.index.json"))
    )


class Checkpoint:
    """The safetensors weights of one folder, read one tensor at a time.

    Each read opens the file, copies one tensor out and closes it: safetensors memory-maps the file,
    and the pages of a file kept open stay resident, so K open checkpoints would grow the process by
    K models over the loop.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if (self.folder / WEIGHTS).is_file():
            files = [WEIGHTS]
        elif (self.folder / INDEX).is_file():
            weight_map = json.loads((self.folder / INDEX).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            raise FileNotFoundError(f"{self.folder}: no {WEIGHTS} or {INDEX}")
        self._specs: dict[str, tuple[Path, str, list[int]]] = {}
        for file in files:
            with safe_open(self.folder / file, framework="pt") as handle:
                if file == files[0]:
                    self.metadata = handle.metadata() or {}
                for name in handle.keys():  # noqa: SIM118
                    view = handle.get_slice(name)
                    self._specs[name] = (self.folder / file, view.get_dtype(), view.get_shape())

    @property
    def names(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, name: str) -> tuple[str, list[int]]:
        """``(safetensors dtype, shape)`` of a tensor, from the header."""
        _, dtype, shape = self._specs[name]
        return dtype, list(shape)

    def get(self, name: str) -> torch.Tensor:
        with safe_open(self._specs[name][0], framework="pt") as handle:
            return handle.get_tensor(name)


class NonFiniteWeights(ValueError):
    """A model's weights hold NaN or inf; the message names the folder or method and the tensor."""


def _require_finite(tensor: torch.Tensor, name: str, where: str) -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteWeights(f"{where}: tensor {name!r} has {bad} NaN/inf values")


def check_finite(folder: str | os.PathLike) -> None:
    """Raise ``NonFiniteWeights`` naming the first tensor of ``folder`` with NaN/inf (streamed, one
    tensor in memory at a time)."""
    ckpt = Checkpoint(folder)
    for name in ckpt.names:
        _require_finite(ckpt.get(name), name, str(ckpt.folder))


def weights_digest(folder: str | os.PathLike) -> str:
    """sha256 of a folder's tensors (names, dtypes, shapes and values, -0.0 counted as 0.0; not the
    file's header or shard layout): equal digests mean the same weights, however they were written."""
    ckpt = Checkpoint(folder)
    digest = hashlib.sha256()
    for name in ckpt.names:
        dtype, shape = ckpt.spec(name)
        tensor = ckpt.get(name)
        if tensor.is_floating_point():
            tensor = tensor + 0.0  # -0.0 + 0.0 = 0.0: θ + (θ − θ) is the same model as θ
        digest.update(f"{name}|{dtype}|{shape}|".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_compatible(base: Checkpoint, candidates: list[Checkpoint]) -> None:
    """Same tensor names and shapes everywhere, or a ``ValueError`` naming the first tensor that differs."""
    names = set(base.names)
    for cand in candidates:
        missing, extra = sorted(names - set(cand.names)), sorted(set(cand.names) - names)
        if missing:
            raise ValueError(f"{cand.folder}: tensor {missing[0]!r} of the base is missing")
        if extra:
            raise ValueError(f"{cand.folder}: tensor {extra[0]!r} is not in the base {base.folder}")
        for name in base.names:
            base_shape, cand_shape = base.spec(name)[1], cand.spec(name)[1]
            if cand_shape != base_shape:
                raise ValueError(
                    f"tensor {name!r}: shape {cand_shape} in {cand.folder}, "
                    f"but {base_shape} in the base {base.folder}"
                )


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def iter_float_deltas(
    base: Checkpoint, candidates: list[Checkpoint]
) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
    """``(name, θ_0, [θ_k − θ_0 for k])`` for every floating-point tensor, in the compute dtype."""
    for name in base.names:
        theta0 = base.get(name)
        if not theta0.is_floating_point():
            continue
        theta0 = theta0.to(_compute_dtype(theta0))
        yield name, theta0, [cand.get(name).to(theta0.dtype) - theta0 for cand in candidates]


def _write_safetensors(
    path: Path,
    specs: list[tuple[str, str, list[int]]],
    tensors: Iterator[tuple[str, torch.Tensor]],
    metadata: dict[str, str],
) -> None:
    """Write a safetensors file from a stream: the header from ``specs`` first, then each tensor's bytes.

    Format: 8-byte little-endian header length, the JSON header (name -> dtype, shape, byte offsets;
    padded with spaces to a multiple of 8), then the tensors' bytes back to back in header order.
    """
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in specs:
        if dtype not in _ITEMSIZE:
            raise ValueError(f"tensor {name!r}: unsupported safetensors dtype {dtype}")
        nbytes = _ITEMSIZE[dtype] * int(torch.Size(shape).numel())
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for (name, _, shape), (got_name, tensor) in zip(specs, tensors, strict=True):
            begin, end = header[name]["data_offsets"]
            if got_name != name or list(tensor.shape) != shape:
                raise RuntimeError(f"stream out of order: {got_name!r} {list(tensor.shape)}")
            data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            if data.nbytes != end - begin:
                raise RuntimeError(
                    f"tensor {name!r}: {data.nbytes} bytes, header says {end - begin}"
                )
            handle.write(memoryview(data))
        handle.flush()
        os.fsync(handle.fileno())


def _copy_non_weight_files(base: Path, dest: Path) -> None:
    """Copy the base folder except its own weight files; a sub-module with weights is refused."""
    for sub in base.iterdir():
        if sub.is_dir() and any(sub.rglob("*.safetensors")):
            raise ValueError(
                f"{sub}: sub-module weights are not fused (only the backbone's {WEIGHTS} is); "
                "remove the module or fuse it separately"
            )
    shutil.copytree(
        base,
        dest,
        dirs_exist_ok=True,
        ignore=lambda folder, names: (
            [n for n in names if _is_root_weight_file(n)] if Path(folder) == base else []
        ),
    )


def fuse(
    base: str | os.PathLike,
    candidates: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    method: str,
    **knobs: object,
) -> str:
    """Fuse ``candidates`` against ``base`` with a registered per-tensor ``method``; return ``out_dir``.

    Args:
        base: the pre-trained folder θ_0 (its non-weight files are copied to the output).
        candidates: K >= 1 fine-tuned folders θ_k with the base's tensor names and shapes.
        out_dir: the new folder; replaced only once the fused one is complete.
        method: a per-tensor method of ``pipeline.fusion.registry.METHODS`` (delta, soup,
            task_arithmetic, ties; greedy_soup is a search, run by ``fusion.select``).
        knobs: the method's keyword arguments (e.g. ``power=2.0`` for delta, ``lam=0.5``).
    """
    spec = get_method(method)
    if spec.fn is None:
        raise ValueError(
            f"fusion method {method!r} is a search over fused models, not a per-tensor method: "
            f"call {spec.search.__module__}.{spec.search.__name__}"
        )
    inspect.signature(spec.fn).bind(None, [], **knobs)  # unknown knob: TypeError before any work
    base_dir, out = Path(base).resolve(), Path(out_dir).resolve()
    if not candidates:
        raise ValueError("fusion needs at least one candidate checkpoint")
    if out in {base_dir, *(Path(c).resolve() for c in candidates)}:
        raise ValueError(f"out_dir {out} is one of the inputs; choose a new folder")
    theta0 = Checkpoint(base_dir)
    cands = [Checkpoint(c) for c in candidates]
    _check_compatible(theta0, cands)
    if spec.prepare is not None:  # e.g. delta's global scales: a first streaming pass
        knobs = {**knobs, **spec.prepare(iter_float_deltas(theta0, cands), **knobs)}

    def fused() -> Iterator[tuple[str, torch.Tensor]]:
        for name in theta0.names:
            tensor = theta0.get(name)
            if tensor.is_floating_point():
                work = tensor.to(_compute_dtype(tensor))
                deltas = [cand.get(name).to(work.dtype) - work for cand in cands]
                tensor = spec.fn(work, deltas, **knobs).to(tensor.dtype)
                _require_finite(tensor, name, f"fusion {method} {knobs}")
            yield name, tensor

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _copy_non_weight_files(base_dir, staging)
        specs = [(name, *theta0.spec(name)) for name in theta0.names]
        metadata = {"format": "pt", **theta0.metadata}
        _write_safetensors(staging / WEIGHTS, specs, fused(), metadata)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return str(out)
