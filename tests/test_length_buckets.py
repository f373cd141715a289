"""Length-bucketed encoder passes: the same embeddings and gradients as one padded pass, with fewer
pad tokens through the model (the optimizer step's equality is in ``test_train_step``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.model.buckets import forward_in_buckets, stack_padded
from pipeline.model.encoder import Encoder
from pipeline.model.loading import resolve_model_path
from pipeline.model.tokenize import pad, tokenize

TEXTS = [
    "A man is playing a guitar.",
    "Two dogs run through a field of tall grass while a child watches from the fence.",
    "Rain.",
    "The committee postponed the vote on the new budget until next month.",
    "A woman slices an onion.",
    "Stocks fell sharply on Monday after the central bank raised interest rates again.",
    "Kids play.",
    "A cat sleeps on a warm windowsill in the afternoon sun.",
    "The quick brown fox jumps over the lazy dog near the river bank at dawn.",
    "Hello there.",
]


def without_dropout(encoder: Encoder) -> Encoder:
    """Dropout draws masks per tensor shape, so bucketed and padded passes differ only through it."""
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return encoder


def _padded(encoder: Encoder, texts: list[str], side: str = "right") -> dict[str, torch.Tensor]:
    features = tokenize(encoder.tokenizer, texts, 48)
    return pad(
        features["input_ids"],
        {"attention_mask": features["attention_mask"]},
        pad_id=encoder.tokenizer.pad_token_id,
        side=side,
    )


class _CountingModel:
    """Calls the encoder and records the token slots (rows x width) each pass was given."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.slots: list[int] = []

    def __call__(self, **features):
        self.slots.append(features["input_ids"].numel())
        return self.encoder(**features)


@pytest.fixture(scope="module")
def encoder(tiny_model_path):
    torch.manual_seed(0)
    return without_dropout(Encoder.from_pretrained(tiny_model_path, device="cpu")).train()


def test_buckets_give_the_padded_pass_embeddings_and_gradients(encoder):
    features = _padded(encoder, TEXTS)
    counting = _CountingModel(encoder)
    bucketed = forward_in_buckets(counting, features, rows=3)
    grads = torch.autograd.grad(bucketed.pow(2).sum(), list(encoder.parameters()))
    whole = encoder(**features)
    want = torch.autograd.grad(whole.pow(2).sum(), list(encoder.parameters()))
    torch.testing.assert_close(bucketed, whole, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, want):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert len(counting.slots) == 4  # 10 rows in chunks of 3
    assert sum(counting.slots) < 0.7 * features["input_ids"].numel()


def test_buckets_return_every_output_of_a_tuple_in_input_order(encoder):
    features = _padded(encoder, TEXTS)
    emb, mid = forward_in_buckets(encoder, features, rows=4, return_mid=True)
    want_emb, want_mid = encoder(**features, return_mid=True)
    torch.testing.assert_close(emb, want_emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mid, want_mid, atol=1e-5, rtol=1e-5)


def test_buckets_keep_left_padding_aligned(tmp_path):
    """Decoders pad on the left: each chunk is trimmed from the left, rows keep their last token."""
    path = resolve_model_path("tiny-random-decoder")
    decoder = without_dropout(Encoder.from_pretrained(path, pooling="last_token", device="cpu"))
    features = _padded(decoder.eval(), TEXTS, side="left")
    with torch.inference_mode():
        torch.testing.assert_close(
            forward_in_buckets(decoder, features, rows=3), decoder(**features), atol=1e-5, rtol=1e-5
        )


def test_stack_padded_puts_rows_of_two_widths_in_one_batch():
    a = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    b = {
        "input_ids": torch.tensor([[8, 0], [9, 4]]),
        "attention_mask": torch.tensor([[1, 0], [1, 1]]),
    }
    both = stack_padded(a, b)
    assert both["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 4, 0]]
    assert both["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
