"""Gradient equivalence of the gathered IR loss: 2 gloo workers, each holding half of a global batch
and wrapped in DistributedDataParallel, match one process computing the whole global batch (loss,
every parameter gradient, parameters after AdamW steps); without the gather they do not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from gloo_workers import join_gloo
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.losses import gather_with_grad, multi_positive_info_nce

WORLD, LOCAL, N_POS, N_NEG, D_IN = 2, 3, 2, 3, 5
STEPS = 2  # AdamW steps; the second one's gradients depend on the first's parameters


class TinyEncoder(nn.Module):
    """A deterministic float64 stand-in for the text encoder: features -> normalised embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, 4)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


def global_batches() -> list[tuple[torch.Tensor, ...]]:
    """STEPS global batches of WORLD * LOCAL queries, with padded positive and negative slots."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        b = WORLD * LOCAL
        q = torch.randn(b, D_IN, generator=g, dtype=torch.float64)
        pos = torch.randn(b, N_POS, D_IN, generator=g, dtype=torch.float64)
        neg = torch.randn(b, N_NEG, D_IN, generator=g, dtype=torch.float64)
        pos_mask = torch.ones(b, N_POS, dtype=torch.bool)
        pos_mask[[1, 4, 5], 1] = False  # slot 1 real for 2 queries of rank 0, 1 of rank 1
        neg_mask = torch.rand(b, N_NEG, generator=g) < 0.7
        batches.append((q, pos, neg, pos_mask, neg_mask))
    return batches


def ir_loss(model: nn.Module, batch, *, gather: bool) -> torch.Tensor:
    q, pos, neg, pos_mask, neg_mask = batch
    b = q.shape[0]
    texts = torch.cat([q, pos.flatten(0, 1), neg.flatten(0, 1)])  # one forward, as the loop does
    emb_q, emb_p, emb_n = model(texts).split([b, b * N_POS, b * N_NEG])
    return multi_positive_info_nce(
        emb_q, emb_p.view(b, N_POS, -1), emb_n.view(b, N_NEG, -1), pos_mask, neg_mask, gather=gather
    )


def train(model: nn.Module, batches, *, gather: bool) -> dict[str, list]:
    """Losses, gradients and parameters after each AdamW step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    out: dict[str, list] = {"loss": [], "grads": [], "params": []}
    for batch in batches:
        loss = ir_loss(model, batch, gather=gather)
        loss.backward()
        out["loss"].append(loss.item())
        out["grads"].append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
        optimizer.zero_grad()
        out["params"].append([p.detach().clone() for p in model.parameters()])
    return out


def worker(rank: int, folder: str) -> None:
    join_gloo(rank, WORLD, folder)
    rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
    local = [tuple(t[rows] for t in batch) for batch in global_batches()]
    results = {
        gather: train(DistributedDataParallel(TinyEncoder()), local, gather=gather)
        for gather in (True, False)
    }
    try:
        gather_with_grad(torch.zeros(rank + 1, 2))
        results["size_error"] = ""
    except ValueError as error:
        results["size_error"] = str(error)
    torch.save(results, Path(folder) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, list[dict]]:
    """The one-process run on the global batch, and the results of each of the 2 workers."""
    folder = tmp_path_factory.mktemp("gather")
    mp.spawn(worker, args=(str(folder),), nprocs=WORLD, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return train(TinyEncoder(), global_batches(), gather=True), ranks


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def test_gather_equivalence_loss_value(runs):
    single, ranks = runs
    for rank in ranks:
        for got, want in zip(rank[True]["loss"], single["loss"]):
            assert abs(got - want) / abs(want) < 1e-5


def test_gather_equivalence_gradients(runs):
    single, ranks = runs
    for rank in ranks:
        for step in range(STEPS):
            for got, want in zip(rank[True]["grads"][step], single["grads"][step]):
                assert rel_error(got, want) < 1e-5


def test_gather_equivalence_adamw_steps(runs):
    single, ranks = runs
    for rank in ranks:
        for step in range(STEPS):
            for got, want in zip(rank[True]["params"][step], single["params"][step]):
                assert rel_error(got, want) < 1e-5


def test_gather_equivalence_fails_without_gather(runs):
    single, ranks = runs
    for rank in ranks:
        assert abs(rank[False]["loss"][0] - single["loss"][0]) > 1e-3
        errors = [rel_error(g, w) for g, w in zip(rank[False]["grads"][0], single["grads"][0])]
        assert max(errors) > 1e-2


def test_gather_unequal_slices_fail_clearly(runs):
    _, ranks = runs
    for rank in ranks:
        assert "same shape on every rank" in rank["size_error"]
