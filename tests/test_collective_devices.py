"""Every collective of a training step gets tensors on the training device.

On GPUs Ray Train starts the process group as NCCL, which serves CUDA tensors only: a collective
handed a CPU tensor fails ("No backend type associated with device type cpu") at the first IR step
of every multi-GPU run. A CPU cannot run NCCL, so these two gloo workers make the same mistake
visible: inside the guarded step every tensor that code creates without naming a device lands on
the ``meta`` device (``torch.set_default_device``), and every ``torch.distributed`` collective is
wrapped to refuse a tensor that is not on the training device (CPU here), naming the call.

The steps are the production ``train_step`` (IR, STS and mixed) on a DDP-wrapped encoder with the
training loop's options. The dev evaluation runs on rank 0 alone and calls no collective.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_workers import join_gloo
from torch.nn.parallel import DistributedDataParallel

from pipeline.data.batches import collate_ir, collate_sts
from pipeline.model.encoder import Encoder
from pipeline.train.optim import build_optimizer, build_scheduler
from pipeline.train.step import DDP_OPTIONS, LossSettings, train_step

WORLD = 2
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_to_all",
    "all_to_all_single",
    "broadcast",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "gather",
    "scatter",
)


class WrongDeviceCollective(RuntimeError):
    """A collective was handed a tensor that is not on the training device."""


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


@contextlib.contextmanager
def strict_collectives(device: torch.device):
    """Refuse any ``torch.distributed`` collective given a tensor off ``device``, as NCCL does
    for CPU tensors; tensors created without a device land on ``meta`` meanwhile."""
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def guarded(name, call):
        def check(*args, **kwargs):
            for tensor in _tensors([*args, *kwargs.values()]):
                if tensor.device != device:
                    raise WrongDeviceCollective(
                        f"dist.{name} got a tensor on {tensor.device}; the training device is "
                        f"{device}"
                    )
            return call(*args, **kwargs)

        return check

    for name, call in originals.items():
        setattr(dist, name, guarded(name, call))
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)
        for name, call in originals.items():
            setattr(dist, name, call)


def _ids(g: torch.Generator, length: int) -> list[int]:
    return [101, *torch.randint(1000, 5000, (length,), generator=g).tolist(), 102]


def micro_batches(rank: int) -> dict[str, dict]:
    """This rank's IR records (rank 1 has more negatives per query) and STS pairs."""
    g = torch.Generator().manual_seed(rank)
    ir = pa.Table.from_pylist(
        [
            {
                "id": f"{rank}-{i}",
                "source": "s",
                "query_input_ids": _ids(g, 5),
                "positives_input_ids": [_ids(g, 8)],
                "negatives_input_ids": [_ids(g, 8) for _ in range(1 + rank)],
            }
            for i in range(3)
        ]
    )
    sts = pa.Table.from_pylist(
        [
            {
                "id": f"{rank}-{i}",
                "source": "s",
                "sentence1_input_ids": _ids(g, 6),
                "sentence2_input_ids": _ids(g, 6),
                "score": i / 3,
            }
            for i in range(4)
        ]
    )
    ir_batch, sts_batch = collate_ir(ir, pad_id=0), collate_sts(sts, pad_id=0)
    return {"ir": ir_batch, "sts": sts_batch, "mixed": {"ir": ir_batch, "sts": sts_batch}}


def worker(rank: int, folder: str, model_path: str) -> None:
    join_gloo(rank, WORLD, folder)
    device = torch.device("cpu")
    encoder = Encoder.from_pretrained(model_path, pooling="mean", device=device)
    model = DistributedDataParallel(encoder, **DDP_OPTIONS)
    optimizer = build_optimizer(encoder, lr=1e-4)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_ratio=0.0)
    options = {"settings": LossSettings(), "grad_clip": 1.0, "device": device, "dim": encoder.dim}
    batches = micro_batches(rank)
    # one unguarded step first: AdamW creates its state lazily, outside the code under test
    train_step(model, optimizer, scheduler, "sts", batches["sts"], **options)
    outcome = {}
    for task in ("ir", "sts", "mixed"):
        try:
            with strict_collectives(device):
                metrics = train_step(model, optimizer, scheduler, task, batches[task], **options)
            outcome[task] = f"loss {metrics['loss']:.4f}"
        except Exception as error:  # reported to the test, which names the task and the call
            outcome[task] = f"{type(error).__name__}: {error}"
            break  # the other rank may now wait in a collective this one never reaches
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_model_path) -> list[dict[str, str]]:
    folder = tmp_path_factory.mktemp("collectives")
    mp.spawn(worker, args=(str(folder), tiny_model_path), nprocs=WORLD, join=True)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_the_guard_refuses_a_collective_on_another_device(tmp_path):
    """The guard itself: a tensor built without a device reaches the collective on ``meta``."""
    join_gloo(0, 1, str(tmp_path))
    try:
        with (
            strict_collectives(torch.device("cpu")),
            pytest.raises(WrongDeviceCollective, match="all_reduce got a tensor on meta"),
        ):
            dist.all_reduce(torch.tensor([1, 2]))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("task", ["ir", "sts", "mixed"])
def test_collectives_of_a_two_worker_step_stay_on_the_training_device(outcomes, task):
    for rank, outcome in enumerate(outcomes):
        assert outcome.get(task, "").startswith("loss"), (rank, task, outcome)
