"""One optimizer step, plain torch: encode a single-task micro-batch, compute that task's loss, clip,
step. Runs inside a Ray Train worker (DDP model, gathered IR negatives) or alone in one process
(benchmarks, the GPU machine) — nothing here imports Ray."""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from pipeline.losses import multi_positive_info_nce, sts_loss
from pipeline.model.buckets import forward_in_buckets, stack_padded


@dataclass(frozen=True)
class LossSettings:
    """Loss knobs (the fields of ``LossConfig``)."""

    ir_temperature: float = 0.02
    sts_temperature: float = 0.05
    midnce_temperature: float = 0.02
    midnce_threshold: float = 0.8
    w_midnce: float = 1.0
    w_pro: float = 0.5
    w_pearson: float = 2.0
    w_rankkl: float = 5.0
    w_cosent: float = 0.0
    cosent_scale: float = 20.0

    def sts_kwargs(self) -> dict[str, float]:
        """Keyword arguments of :func:`pipeline.losses.sts_loss`."""
        kwargs = asdict(self)
        kwargs.pop("ir_temperature")
        return kwargs


# DistributedDataParallel options for the training model. Each worker embeds only its real passages,
# in length buckets, so with IR sources whose records have different numbers of positives or
# negatives (SNLI, TREC-QA beside SciFact) the workers make different numbers of forward calls in a
# step. DDP's default syncs the module buffers at every forward call, a collective the workers
# would then call different numbers of times: they hang. The encoder's buffers (position and token
# type ids) never change, so they are synced once, when DDP wraps the model, and never per forward;
# gradients are still all-reduced once per backward, whatever the number of forward calls.
def ddp_options(ddp_class: type = torch.nn.parallel.DistributedDataParallel) -> dict[str, bool]:
    """No per-forward buffer sync, in the installed torch's spelling: ``forward_sync_buffers``
    (torch >= 2.13, where ``broadcast_buffers`` is deprecated) or ``broadcast_buffers`` (older)."""
    if "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


DDP_OPTIONS = ddp_options()


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(features: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in features.items()}


def _global_max(*values: int, device: torch.device) -> list[int]:
    """Element-wise max over workers (slot counts must agree before the IR gather). The tensor lives
    on the training ``device``: NCCL, Ray Train's backend on GPUs, refuses CPU tensors."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _encode_slots(
    model,
    nested: dict[str, torch.Tensor],
    mask: torch.Tensor,
    slots: int,
    device,
    dim: int,
    bucket_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed the real slots of a [B, K, L] passage tensor -> ([B, slots, D], mask [B, slots])."""
    batch, k = mask.shape
    out = torch.zeros(batch, slots, dim, device=device)
    full_mask = torch.zeros(batch, slots, dtype=torch.bool, device=device)
    full_mask[:, :k] = mask.to(device)
    if mask.any():
        ids = nested["input_ids"][mask].to(device)  # [R, L] real passages only
        att = nested["attention_mask"][mask].to(device)
        emb = forward_in_buckets(model, {"input_ids": ids, "attention_mask": att}, bucket_rows)
        out = out.index_put((full_mask.nonzero(as_tuple=True)), emb.float())
    return out, full_mask


def ir_forward(
    model,
    batch: dict,
    *,
    settings: LossSettings,
    device: torch.device,
    dim: int,
    bf16: bool = False,
    bucket_rows: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-positive InfoNCE over the global batch (passages gathered across workers); each encoder
    pass runs in length buckets of ``bucket_rows`` rows (0: one padded pass)."""
    pos_slots, neg_slots = _global_max(
        batch["positive_mask"].shape[1], batch["negative_mask"].shape[1], device=device
    )
    with _autocast(device, bf16):
        query = forward_in_buckets(model, _to(batch["query"], device), bucket_rows).float()
        positives, pos_mask = _encode_slots(
            model, batch["positives"], batch["positive_mask"], pos_slots, device, dim, bucket_rows
        )  # [B, P, D]
        negatives, neg_mask = _encode_slots(
            model, batch["negatives"], batch["negative_mask"], neg_slots, device, dim, bucket_rows
        )  # [B, N, D]
    loss = multi_positive_info_nce(
        query, positives, negatives, pos_mask, neg_mask, temperature=settings.ir_temperature
    )
    return loss, {"loss_ir": float(loss.detach())}


def sts_forward(
    model,
    batch: dict,
    *,
    settings: LossSettings,
    device: torch.device,
    bf16: bool = False,
    bucket_rows: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted STS objective on this worker's pairs (MidNCE reads the middle layer). Both sides
    of the pairs go through the encoder together, in length buckets of ``bucket_rows`` rows."""
    mid = settings.w_midnce > 0
    pairs = len(batch["score"])
    both = stack_padded(batch["sentence1"], batch["sentence2"])
    with _autocast(device, bf16):
        out = forward_in_buckets(model, _to(both, device), bucket_rows, return_mid=mid)
    emb, emb_mid = out if mid else (out, None)
    a, b = emb[:pairs], emb[pairs:]
    a_mid, b_mid = (None, None) if emb_mid is None else (emb_mid[:pairs], emb_mid[pairs:])
    total, parts = sts_loss(
        a.float(),
        b.float(),
        batch["score"].to(device),
        None if a_mid is None else a_mid.float(),
        None if b_mid is None else b_mid.float(),
        **settings.sts_kwargs(),
    )
    return total, {"loss_sts": float(total.detach()), **{k: float(v) for k, v in parts.items()}}


def batch_size_and_tokens(task: str, batch: dict) -> tuple[int, int]:
    """(records, non-pad tokens) of a micro-batch, for throughput metrics."""
    if task == "mixed":
        sizes = [batch_size_and_tokens(t, b) for t, b in batch.items()]
        return sum(s for s, _ in sizes), sum(t for _, t in sizes)
    if task == "ir":
        tokens = sum(
            int(batch[k]["attention_mask"].sum()) for k in ("query", "positives", "negatives")
        )
        return len(batch["ids"]), tokens
    tokens = sum(int(batch[k]["attention_mask"].sum()) for k in ("sentence1", "sentence2"))
    return len(batch["ids"]), tokens


def train_step(
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    task: str,
    batch: dict,
    *,
    settings: LossSettings,
    grad_clip: float,
    device: torch.device,
    dim: int,
    bf16: bool = False,
    bucket_rows: int = 16,
) -> dict[str, float]:
    """Forward, backward, clip, optimizer and scheduler step for one ``ir`` / ``sts`` / ``mixed`` step;
    encoder passes run in length buckets of ``bucket_rows`` rows (0: one padded pass each).

    Returns the step's metrics: each loss component, the total, lr, grad norm, the real tokens this
    worker encoded, pairs/s and tokens/s (of this worker)."""
    started = time.perf_counter()
    lr = scheduler.get_last_lr()[0]
    model.train()
    optimizer.zero_grad(set_to_none=True)
    parts: dict[str, float] = {}
    total = torch.zeros((), device=device)
    for name, sub in batch.items() if task == "mixed" else [(task, batch)]:
        if name == "ir":
            loss, info = ir_forward(
                model,
                sub,
                settings=settings,
                device=device,
                dim=dim,
                bf16=bf16,
                bucket_rows=bucket_rows,
            )
        else:
            loss, info = sts_forward(
                model, sub, settings=settings, device=device, bf16=bf16, bucket_rows=bucket_rows
            )
        total = total + loss
        parts.update(info)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    seconds = time.perf_counter() - started
    records, tokens = batch_size_and_tokens(task, batch)
    return {
        "loss": float(total.detach()),
        **parts,
        "lr": lr,
        "grad_norm": float(grad_norm),
        "step_seconds": seconds,
        "tokens": tokens,
        "pairs_per_s": records / seconds,
        "tokens_per_s": tokens / seconds,
    }
