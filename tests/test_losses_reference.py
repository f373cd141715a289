"""Every loss against a slow reference written from its definition (python loops, float64), plus
degenerate batches (finite values and gradients, a logged warning)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import (
    cosent,
    cosent_loss,
    ir,
    mid_nce_loss,
    midnce,
    multi_positive_info_nce,
    pearson,
    pearson_loss,
    pro,
    pro_loss,
    rank_kl_loss,
    rankkl,
    sts_loss,
)

SEEDS = [0, 1, 2, 3]
TOL = {"rtol": 1e-10, "atol": 1e-12}


# ----------------------------------------------------------------------------- references


def _cos(u: list[float], v: list[float]) -> float:
    dot = sum(x * y for x, y in zip(u, v))
    return dot / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))


def ref_ir(q, pos, neg, pmask, nmask, tau):
    """METHOD-NOTES' IR loss on one global batch, term by term."""
    n_q, n_pos, n_neg = len(q), len(pos[0]), len(neg[0])
    slot_losses = []
    for p in range(n_pos):
        terms = []
        for i in range(n_q):
            if not pmask[i][p]:
                continue
            den = 0.0
            for j in range(n_q):
                if pmask[j][p]:
                    den += math.exp(_cos(q[i], pos[j][p]) / tau)
                for n in range(n_neg):
                    if nmask[j][n]:
                        den += math.exp(_cos(q[i], neg[j][n]) / tau)
            terms.append(-math.log(math.exp(_cos(q[i], pos[i][p]) / tau) / den))
        if terms:
            slot_losses.append(sum(terms) / len(terms))
    return sum(slot_losses) / len(slot_losses)


def _mean(xs):
    return sum(xs) / len(xs)


def ref_pearson(s, y):
    ms, my = _mean(s), _mean(y)
    cov = _mean([(a - ms) * (b - my) for a, b in zip(s, y)])
    var_s = max(_mean([(a - ms) ** 2 for a in s]), 1e-12)
    var_y = _mean([(b - my) ** 2 for b in y])
    return 1.0 - cov / (math.sqrt(var_s) * math.sqrt(var_y))


def ref_rank_kl(s, y, tau):
    n = len(s)
    order = sorted(range(n), key=lambda i: -y[i])  # descending, 0-based positions
    rank = [0.0] * n
    pos = 0
    while pos < n:  # a run of equal gold scores shares the average of its positions
        end = pos
        while end + 1 < n and y[order[end + 1]] == y[order[pos]]:
            end += 1
        for k in range(pos, end + 1):
            rank[order[k]] = (pos + end) / 2
        pos = end + 1
    yhat = [(n - 1 - r) / (n - 1) for r in rank]
    zp = sum(math.exp(v / tau) for v in yhat)
    zq = sum(math.exp(v / tau) for v in s)
    total = 0.0
    for i in range(n):
        p_i = math.exp(yhat[i] / tau) / zp
        log_q = s[i] / tau - math.log(zq)
        total += p_i * (math.log(p_i) - log_q)
    return total / n


def ref_pro(s, y, tau):
    order = sorted(range(len(s)), key=lambda i: -y[i])
    ss = [s[i] / tau for i in order]
    yy = [y[i] for i in order]
    terms = []
    for k in range(len(ss)):
        negs = [j for j in range(k + 1, len(ss)) if yy[k] - yy[j] > 1e-8]
        if not negs:
            continue
        w_k = max(yy[k] - yy[j] for j in negs)
        logits = [ss[k] * w_k] + [ss[j] * (yy[k] - yy[j]) for j in negs]
        terms.append(-(logits[0] - math.log(sum(math.exp(v) for v in logits))))
    return _mean(terms)


def ref_mid_nce(a, b, y, tau, threshold):
    terms = []
    for i in range(len(a)):
        if y[i] < threshold:
            continue
        den = sum(math.exp(_cos(a[i], b[j]) / tau) for j in range(len(b)))
        terms.append(-math.log(math.exp(_cos(a[i], b[i]) / tau) / den))
    return _mean(terms)


def ref_cosent(s, y, lam):
    total = 1.0
    for i in range(len(s)):
        for j in range(len(s)):
            if y[i] > y[j]:
                total += math.exp(lam * (s[j] - s[i]))
    return math.log(total)


# ----------------------------------------------------------------------------- inputs


def _sts_batch(seed: int, n: int = 12, dim: int = 6):
    """Embeddings and gold scores with ties: gold on a 0-5 grid of 0.5 (normalised), and the
    last two pairs duplicate the first two, so cosines tie too."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, dim, generator=g, dtype=torch.float64)
    b = a + 0.8 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    a[-2:], b[-2:] = a[:2], b[:2]
    gold = torch.randint(0, 11, (n,), generator=g).double() / 10
    gold[0] = 1.0  # at least one MidNCE anchor
    return a, b, gold


def _ir_batch(seed: int, b: int = 5, p: int = 3, n: int = 4, dim: int = 8):
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, dim, generator=g, dtype=torch.float64), dim=-1)

    q, pos, neg = unit(b), unit(b, p), unit(b, n)
    pmask = torch.rand(b, p, generator=g) < 0.7
    pmask[:, 0] = True  # every query keeps one positive
    if seed % 2:
        pmask[:, -1] = False  # a slot that no query has
    nmask = torch.rand(b, n, generator=g) < 0.6
    return q, pos, neg, pmask, nmask


def _lists(x: torch.Tensor):
    return x.tolist()


# ----------------------------------------------------------------------------- IR


@pytest.mark.parametrize("seed", SEEDS)
def test_ir_loss_matches_reference(seed):
    q, pos, neg, pmask, nmask = _ir_batch(seed)
    got = multi_positive_info_nce(q, pos, neg, pmask, nmask, temperature=0.05)
    want = ref_ir(*map(_lists, (q, pos, neg, pmask, nmask)), 0.05)
    torch.testing.assert_close(got.item(), want, **TOL)


def test_ir_loss_reference_unmasked_and_without_negatives():
    q, pos, neg, _, _ = _ir_batch(7)
    got = multi_positive_info_nce(q, pos, neg)  # default masks: all real, tau 0.02
    ones = [[True] * 3] * 5
    want = ref_ir(_lists(q), _lists(pos), _lists(neg), ones, [[True] * 4] * 5, 0.02)
    torch.testing.assert_close(got.item(), want, **TOL)
    got = multi_positive_info_nce(q, pos, neg[:, :0])
    want = ref_ir(_lists(q), _lists(pos), [[]] * 5, ones, [[]] * 5, 0.02)
    torch.testing.assert_close(got.item(), want, **TOL)


def test_ir_loss_reference_padding_values_are_ignored():
    q, pos, neg, pmask, nmask = _ir_batch(3)
    base = multi_positive_info_nce(q, pos, neg, pmask, nmask)
    noisy_pos = torch.where(pmask.unsqueeze(-1), pos, torch.randn_like(pos))
    noisy_neg = torch.where(nmask.unsqueeze(-1), neg, torch.randn_like(neg))
    torch.testing.assert_close(multi_positive_info_nce(q, noisy_pos, noisy_neg, pmask, nmask), base)


def test_ir_loss_reference_gradcheck():
    q, pos, neg, pmask, nmask = _ir_batch(1, b=3, p=2, n=2, dim=4)
    inputs = [t.clone().requires_grad_() for t in (q, pos, neg)]
    assert torch.autograd.gradcheck(
        lambda *x: multi_positive_info_nce(*x, pmask, nmask, temperature=0.5), inputs
    )


# ----------------------------------------------------------------------------- STS


def _scores(a, b):
    return F.cosine_similarity(a, b, dim=-1)


STS_CASES = {
    "pearson": (lambda s, y: pearson_loss(s, y), lambda s, y: ref_pearson(s, y)),
    "rankkl": (
        lambda s, y: rank_kl_loss(s, y, temperature=0.05),
        lambda s, y: ref_rank_kl(s, y, 0.05),
    ),
    "pro": (lambda s, y: pro_loss(s, y, temperature=0.05), lambda s, y: ref_pro(s, y, 0.05)),
    "cosent": (lambda s, y: cosent_loss(s, y, scale=20.0), lambda s, y: ref_cosent(s, y, 20.0)),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(STS_CASES))
def test_sts_loss_matches_reference(name, seed):
    a, b, gold = _sts_batch(seed)
    s = _scores(a, b)
    assert len(set(gold.tolist())) < len(gold) and len(set(s.tolist())) < len(s)  # ties present
    loss, ref = STS_CASES[name]
    torch.testing.assert_close(loss(s, gold).item(), ref(s.tolist(), gold.tolist()), **TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_mid_nce_matches_reference(seed):
    a, b, gold = _sts_batch(seed)
    got = mid_nce_loss(a, b, gold, temperature=0.02, threshold=0.8)
    want = ref_mid_nce(a.tolist(), b.tolist(), gold.tolist(), 0.02, 0.8)
    torch.testing.assert_close(got.item(), want, **TOL)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_sts_total_matches_reference(seed):
    a, b, gold = _sts_batch(seed)
    am, bm = a.flip(1), b.flip(1)  # any other embeddings stand in for the middle layer
    total, parts = sts_loss(a, b, gold, am, bm, w_cosent=0.25)
    s, y = _scores(a, b).tolist(), gold.tolist()
    want = {
        "midnce": ref_mid_nce(am.tolist(), bm.tolist(), y, 0.02, 0.8),
        "pro": ref_pro(s, y, 0.05),
        "pearson": ref_pearson(s, y),
        "rankkl": ref_rank_kl(s, y, 0.05),
        "cosent": ref_cosent(s, y, 20.0),
    }
    assert set(parts) == set(want)
    for name, value in want.items():
        torch.testing.assert_close(parts[name].item(), value, **TOL)
    weighted = 1 * want["midnce"] + 0.5 * want["pro"] + 2 * want["pearson"] + 5 * want["rankkl"]
    torch.testing.assert_close(total.item(), weighted + 0.25 * want["cosent"], **TOL)


def test_sts_reference_defaults_skip_cosent_and_need_mid_embeddings():
    a, b, gold = _sts_batch(0)
    _, parts = sts_loss(a, b, gold, a, b)
    assert set(parts) == {"midnce", "pro", "pearson", "rankkl"}
    with pytest.raises(ValueError, match="a_mid"):
        sts_loss(a, b, gold)
    _, parts = sts_loss(a, b, gold, w_midnce=0.0)
    assert "midnce" not in parts


@pytest.mark.parametrize("name", sorted(STS_CASES) + ["midnce"])
def test_sts_reference_gradcheck(name):
    a, b, gold = _sts_batch(5, n=6, dim=4)
    a, b = a.requires_grad_(), b.requires_grad_()
    if name == "midnce":
        fn = lambda x, z: mid_nce_loss(x, z, gold)  # noqa: E731
    else:
        fn = lambda x, z: STS_CASES[name][0](_scores(x, z), gold)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b))


# ----------------------------------------------------------------------------- degenerate


@pytest.fixture
def fresh_warnings():
    """Each loss warns once per kind and process: reset that memory for the test."""
    for module in (ir, pearson, rankkl, pro, midnce, cosent):
        module._warn_once.cache_clear()


DEGENERATE = {
    "all_gold_equal": (torch.full((6,), 0.9), {"pearson", "pro", "cosent"}),
    "one_pair": (torch.tensor([0.9]), {"pearson", "rankkl", "pro", "cosent"}),
    "no_high_score_pair": (torch.tensor([0.1, 0.5, 0.3, 0.7]), {"midnce"}),
}


@pytest.mark.parametrize("kind", sorted(DEGENERATE))
def test_sts_reference_degenerate_batches_are_finite(kind, caplog, fresh_warnings):
    gold, warned = DEGENERATE[kind]
    gold = gold.double()
    n = len(gold)
    g = torch.Generator().manual_seed(0)
    a, b, am, bm = (torch.randn(n, 5, generator=g, dtype=torch.float64) for _ in range(4))
    inputs = [t.requires_grad_() for t in (a, b, am, bm)]
    with caplog.at_level(logging.WARNING, logger="pipeline.losses"):
        total, parts = sts_loss(*inputs[:2], gold, *inputs[2:], w_cosent=1.0)
        total.backward()
        sts_loss(*inputs[:2], gold, *inputs[2:], w_cosent=1.0)  # the same kind: no second warning
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert all(torch.isfinite(t.grad).all() for t in inputs)
    logged = {r.name.rsplit(".", 1)[-1] for r in caplog.records}
    assert logged == warned
    assert len(caplog.records) == len(warned)


def test_sts_reference_equal_predictions_are_finite():
    gold = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    s = torch.full((3,), 0.3, dtype=torch.float64, requires_grad=True)
    for loss, _ in STS_CASES.values():
        value = loss(s, gold)
        (grad,) = torch.autograd.grad(value, s)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_ir_reference_no_real_positive_is_finite(caplog, fresh_warnings):
    q, pos, neg, _, nmask = _ir_batch(0)
    q.requires_grad_()
    with caplog.at_level(logging.WARNING, logger="pipeline.losses"):
        loss = multi_positive_info_nce(q, pos, neg, torch.zeros(5, 3, dtype=torch.bool), nmask)
        loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(q.grad).all()
    assert "no query" in caplog.text
