"""Pooling modes: padding never leaks into an embedding; positions are right for left and right padding;
instruction tokens are left out of mean pooling."""

from __future__ import annotations

import pytest
import torch

from pipeline.model.encoder import Encoder
from pipeline.model.pooling import cls_pool, last_token_pool, mean_pool, pool
from pipeline.model.tokenize import pad, tokenize

# two rows of lengths 3 and 5 in a width of 6; hidden[b, t] = 10 * b + t (one feature) identifies the slot
RIGHT = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
LEFT = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
HIDDEN = (10 * torch.arange(2)[:, None] + torch.arange(6)[None, :]).float().unsqueeze(-1)


@pytest.mark.parametrize(
    ("mask", "first", "last"),
    [(RIGHT, [0, 10], [2, 14]), (LEFT, [3, 11], [5, 15])],
    ids=["right-padding", "left-padding"],
)
def test_position_pooling_finds_first_and_last_real_token(mask, first, last):
    assert cls_pool(HIDDEN, mask).squeeze(-1).tolist() == first
    assert last_token_pool(HIDDEN, mask).squeeze(-1).tolist() == last


def test_mean_pool_averages_only_masked_in_tokens():
    assert mean_pool(HIDDEN, RIGHT).squeeze(-1).tolist() == [1.0, 12.0]
    assert mean_pool(HIDDEN, LEFT).squeeze(-1).tolist() == [4.0, 13.0]
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(HIDDEN, RIGHT, "max")


@pytest.fixture(scope="module", params=["mean", "cls", "last_token"])
def encoder(request, tiny_model_path) -> Encoder:
    torch.manual_seed(0)
    return Encoder.from_pretrained(tiny_model_path, pooling=request.param, device="cpu").eval()


def _forward(encoder: Encoder, texts: list[str], extra_pad: int = 0, instruction: str = ""):
    feats = tokenize(encoder.tokenizer, texts, 64, instruction)
    ids = [seq + [encoder.tokenizer.pad_token_id] * extra_pad for seq in feats["input_ids"]]
    masks = {
        name: [m + [0] * extra_pad for m in feats[name]] for name in ("attention_mask", "pool_mask")
    }
    batch = pad(ids, masks, pad_id=encoder.tokenizer.pad_token_id)
    with torch.inference_mode():
        return encoder(**batch)


def test_padding_does_not_change_the_embedding(encoder):
    texts = ["a short one", "a much longer sentence that sets the padded width of the batch"]
    alone = _forward(encoder, texts[:1])
    batched = _forward(encoder, texts)[:1]
    extra = _forward(encoder, texts[:1], extra_pad=7)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(extra, alone, atol=1e-5, rtol=1e-5)


def test_pooling_reads_the_right_token_states(encoder):
    feats = tokenize(encoder.tokenizer, ["the cat sat", "a dog"], 64)
    batch = pad(feats["input_ids"], {"attention_mask": feats["attention_mask"]})
    with torch.inference_mode():
        hidden = encoder.backbone(**batch).last_hidden_state  # [2, T, H]
        got = encoder(**batch)
    lengths = batch["attention_mask"].sum(1)
    if encoder.pooling == "mean":
        want = torch.stack([hidden[i, : lengths[i]].mean(0) for i in range(2)])
    elif encoder.pooling == "cls":
        want = hidden[:, 0]
    else:
        want = torch.stack([hidden[i, lengths[i] - 1] for i in range(2)])
    torch.testing.assert_close(got, torch.nn.functional.normalize(want, dim=-1))


def test_last_token_with_left_padding_matches_the_unpadded_state(tiny_model_path):
    encoder = Encoder.from_pretrained(tiny_model_path, pooling="last_token", device="cpu")
    texts = ["a dog", "the cat sat on the mat"]
    feats = tokenize(encoder.tokenizer, texts, 64)
    batch = pad(feats["input_ids"], {"attention_mask": feats["attention_mask"]}, side="left")
    assert batch["attention_mask"][0, 0] == 0  # the short row is left-padded
    with torch.inference_mode():
        got = encoder(**batch)
        for row, ids in enumerate(feats["input_ids"]):
            hidden = encoder.backbone(input_ids=torch.tensor([ids])).last_hidden_state
            want = torch.nn.functional.normalize(hidden[0, -1], dim=-1)
            torch.testing.assert_close(got[row], want, atol=1e-5, rtol=1e-5)


def test_instruction_tokens_are_left_out_of_mean_pooling(tiny_model_path):
    encoder = Encoder.from_pretrained(tiny_model_path, pooling="mean", device="cpu").eval()
    instruction = "Retrieve relevant abstracts"
    feats = tokenize(encoder.tokenizer, ["the cat sat"], 64, instruction)
    ids, keep = torch.tensor(feats["input_ids"]), torch.tensor(feats["pool_mask"])
    n_prefix = len(encoder.tokenizer("Instruction: " + instruction + " Query:")["input_ids"]) - 2
    assert (
        keep[0, 0] == 1 and keep[0, 1 : 1 + n_prefix].sum() == 0 and keep[0, 1 + n_prefix :].all()
    )
    with torch.inference_mode():
        hidden = encoder.backbone(
            input_ids=ids, attention_mask=torch.ones_like(ids)
        ).last_hidden_state
    want = torch.nn.functional.normalize(hidden[0, keep[0].bool()].mean(0), dim=-1)
    got = encoder.encode(["the cat sat"], max_length=64, instruction=instruction)[0]
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)
    plain = _forward(encoder, ["the cat sat"], instruction=instruction)[0]
    everything = torch.nn.functional.normalize(hidden[0].mean(0), dim=-1)
    assert not torch.allclose(plain, everything, atol=1e-3)
