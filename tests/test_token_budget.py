"""``train.max_tokens_per_batch``: an IR micro-batch of long SciFact documents over the budget gets
shorter passages (each keeping its final SEP token) with a warning, and still trains; one that fits is
untouched; a budget the queries alone exhaust is refused with a clear message."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import SourceConfig
from pipeline.data.batches import MIN_PASSAGE_TOKENS, cap_ir_tokens, collate_ir, padded_tokens
from pipeline.data.ray_datasets import tokenize_ir
from pipeline.data.readers import read_source
from pipeline.model.encoder import Encoder
from pipeline.train.optim import build_optimizer, build_scheduler
from pipeline.train.step import LossSettings, train_step


@pytest.fixture(scope="module")
def long_batch(data_root, tiny_model_path):
    """8 SciFact training queries, their positives and two other queries' positives as negatives,
    tokenized with 512-token passages (abstracts run to several hundred tokens)."""
    table = read_source(
        SourceConfig(name="scifact", task="ir", format="beir", path="scifact-beir", limit=8),
        str(data_root),
    ).table
    positives = table.column("positives").to_pylist()
    negatives = [positives[(i + 1) % 8] + positives[(i + 2) % 8] for i in range(8)]
    table = table.set_column(table.schema.get_field_index("negatives"), "negatives", [negatives])
    tokens = tokenize_ir(
        table, tokenizer_path=tiny_model_path, max_length_query=32, max_length_passage=512
    )
    return collate_ir(tokens, pad_id=0)


def test_over_budget_batch_gets_shorter_passages_that_keep_their_sep(long_batch, tiny_model_path):
    budget = padded_tokens(long_batch) // 3
    with pytest.warns(UserWarning, match=r"step 7: IR micro-batch has \d+ padded tokens > "):
        capped = cap_ir_tokens(long_batch, budget, "step 7: ")
    assert padded_tokens(capped) <= budget
    cap = capped["passage_tokens_cap"]
    assert capped["positives"]["input_ids"].shape[-1] <= cap
    assert torch.equal(capped["query"]["input_ids"], long_batch["query"]["input_ids"])
    sep = Encoder.from_pretrained(tiny_model_path, device="cpu").tokenizer.sep_token_id
    for key in ("positives", "negatives"):
        before, after = long_batch[key], capped[key]
        lengths = before["attention_mask"].sum(-1)
        kept = after["attention_mask"].sum(-1)
        assert torch.equal(kept, lengths.clamp(max=cap))
        cut = lengths > cap
        assert cut.any(), "the budget must cut some passages for this test to mean anything"
        assert (after["input_ids"][..., cap - 1][cut] == sep).all()
        short = ~cut & (lengths > 0)  # passages that fit are unchanged
        width = after["input_ids"].shape[-1]
        assert torch.equal(after["input_ids"][short], before["input_ids"][short][:, :width])

    encoder = Encoder.from_pretrained(tiny_model_path, device="cpu")
    optimizer = build_optimizer(encoder, lr=1e-3)
    metrics = train_step(
        encoder,
        optimizer,
        build_scheduler(optimizer, total_steps=1, warmup_ratio=0.0),
        "ir",
        capped,
        settings=LossSettings(),
        grad_clip=1.0,
        device=torch.device("cpu"),
        dim=encoder.dim,
    )
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_batch_within_budget_is_untouched(long_batch):
    assert cap_ir_tokens(long_batch, padded_tokens(long_batch)) is long_batch


def test_budget_the_queries_exhaust_is_refused(long_batch):
    queries = long_batch["query"]["input_ids"].numel()
    with pytest.raises(ValueError, match="does not fit train.max_tokens_per_batch"):
        cap_ir_tokens(long_batch, queries + MIN_PASSAGE_TOKENS)
