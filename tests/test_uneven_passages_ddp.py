"""Workers whose IR records have different numbers of passages: 2 gloo workers running the
production ``ir_forward`` on DDP with the training loop's options must finish the step (not hang)
and give the one-process gradients of the whole global batch.

Rank 0 holds SNLI-like records (one short negative each), rank 1 SciFact-like ones (three long
negatives), and the encoder passes run in buckets of 2 rows, so rank 0 makes fewer forward calls
than rank 1 in the same step. With DDP's default buffer broadcast at every forward call that
mismatch deadlocked the demo at its second IR step (the gloo timeout below turns a hang into an
error)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_workers import join_gloo
from torch.nn.parallel import DistributedDataParallel

from pipeline.data.batches import collate_ir
from pipeline.model.encoder import Encoder
from pipeline.train.step import DDP_OPTIONS, LossSettings, ddp_options, ir_forward

WORLD, LOCAL, BUCKET_ROWS = 2, 4, 2


def global_records() -> pa.Table:
    """Rows 0-3 (rank 0): 1 positive and 1 negative of 4-6 tokens; rows 4-7 (rank 1): 1 positive
    and 3 negatives of 12-20 tokens."""
    g = torch.Generator().manual_seed(3)

    def text(low: int, high: int) -> list[int]:
        length = int(torch.randint(low, high + 1, (1,), generator=g))
        return [101, *torch.randint(1000, 5000, (length,), generator=g).tolist(), 102]

    rows = []
    for i in range(WORLD * LOCAL):
        short = i < LOCAL
        low, high, negatives = (4, 6, 1) if short else (12, 20, 3)
        rows.append(
            {
                "id": str(i),
                "source": "snli" if short else "scifact",
                "query_input_ids": text(3, 8),
                "positives_input_ids": [text(low, high)],
                "negatives_input_ids": [text(low, high) for _ in range(negatives)],
            }
        )
    return pa.Table.from_pylist(rows)


def step_gradients(model, encoder: Encoder, records: pa.Table) -> dict[str, torch.Tensor]:
    """One IR forward and backward; the gradient of every parameter by name."""
    loss, _ = ir_forward(
        model,
        collate_ir(records, pad_id=0),
        settings=LossSettings(ir_temperature=0.05),
        device=torch.device("cpu"),
        dim=encoder.dim,
        bucket_rows=BUCKET_ROWS,
    )
    loss.backward()
    return {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}


def load_encoder(path: str) -> Encoder:
    encoder = Encoder.from_pretrained(path, pooling="mean", normalize=True)
    return encoder.eval()  # no dropout: the workers and the reference see the same function


def worker(rank: int, folder: str, model_path: str) -> None:
    join_gloo(rank, WORLD, folder)
    encoder = load_encoder(model_path)
    local = global_records().slice(rank * LOCAL, LOCAL)
    grads = step_gradients(DistributedDataParallel(encoder, **DDP_OPTIONS), encoder, local)
    torch.save(grads, Path(folder) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def gradients(tmp_path_factory, tiny_model_path) -> tuple[dict, list[dict]]:
    """The one-process gradients on the global batch, and each worker's."""
    folder = tmp_path_factory.mktemp("uneven")
    mp.spawn(worker, args=(str(folder), tiny_model_path), nprocs=WORLD, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    encoder = load_encoder(tiny_model_path)
    return step_gradients(encoder, encoder, global_records()), ranks


def test_the_ranks_make_different_numbers_of_forward_calls():
    records = global_records()
    negatives = [len(x) for x in records.column("negatives_input_ids").to_pylist()]
    calls = [-(-sum(negatives[r * LOCAL : (r + 1) * LOCAL]) // BUCKET_ROWS) for r in range(WORLD)]
    assert calls[0] < calls[1]  # the situation that used to hang


def test_uneven_workers_match_one_process(gradients):
    single, ranks = gradients
    assert single and all(rank.keys() == single.keys() for rank in ranks)
    # relative to the whole gradient's norm: some gradients are zero up to rounding (key biases:
    # softmax ignores a shift shared by all keys), so their own norm is no yardstick
    scale = torch.cat([g.flatten() for g in single.values()]).norm()
    for rank in ranks:
        for name, want in single.items():
            assert ((rank[name] - want).norm() / scale).item() < 1e-5, name


def test_ddp_options_follow_the_installed_torch():
    """torch >= 2.13 spells "no per-forward buffer sync" forward_sync_buffers (broadcast_buffers is
    deprecated there); older torch, which pyproject's range allows, only knows broadcast_buffers."""

    class OlderDDP:
        def __init__(self, module, broadcast_buffers=True):
            pass

    class NewerDDP:
        def __init__(self, module, broadcast_buffers=None, forward_sync_buffers=None):
            pass

    assert ddp_options(OlderDDP) == {"broadcast_buffers": False}
    assert ddp_options(NewerDDP) == {"forward_sync_buffers": False}
    assert ddp_options(DistributedDataParallel) == DDP_OPTIONS
