"""The encoder: encode order, training forward (gradients, middle layer), the sentence-transformers
folder round trip, a decoder with last-token pooling, and Ray Data actor-pool encoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.model.encoder import Encoder
from pipeline.model.save import save_pretrained_st
from pipeline.model.st_settings import read_st_settings
from pipeline.model.tokenize import pad, tokenize

TEXTS = [
    "A man is playing a guitar.",
    "Scientists found that the protein folds in two steps under heat stress, which was unexpected.",
    "ok",
    "The cat sat on the mat while the dog slept by the fire.",
    "Dense retrieval with contrastive learning",
    "x y z",
    "Another medium length sentence about embeddings and pooling.",
]


@pytest.fixture(scope="module")
def encoder(tiny_model_path) -> Encoder:
    return Encoder.from_pretrained(tiny_model_path, device="cpu")


def test_sorted_encode_equals_unsorted_and_keeps_order(encoder):
    sorted_emb = encoder.encode(TEXTS, max_length=32, batch_size=3, sort_by_length=True)
    plain = encoder.encode(TEXTS, max_length=32, batch_size=3, sort_by_length=False)
    one_by_one = np.concatenate([encoder.encode([t], max_length=32) for t in TEXTS])
    assert sorted_emb.shape == (len(TEXTS), encoder.dim) and sorted_emb.dtype == np.float32
    np.testing.assert_allclose(sorted_emb, plain, atol=1e-5)
    np.testing.assert_allclose(sorted_emb, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(sorted_emb, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([], max_length=32).shape == (0, encoder.dim)


def test_loads_in_eval_mode_and_encode_restores_training_mode(encoder):
    assert not encoder.training and not encoder.backbone.training
    encoder.train()
    encoder.encode(TEXTS[:2], max_length=16)
    assert encoder.training and encoder.backbone.training
    encoder.eval()


def test_forward_trains_every_parameter_and_returns_the_middle_layer(tiny_model_path):
    torch.manual_seed(0)
    model = Encoder.from_pretrained(tiny_model_path, gradient_checkpointing=True, device="cpu")
    model.train()
    feats = tokenize(model.tokenizer, TEXTS[:4], 32)
    batch = pad(feats["input_ids"], {k: feats[k] for k in ("attention_mask", "pool_mask")})
    emb, mid = model(**batch, return_mid=True)
    assert emb.shape == mid.shape == (4, model.dim)
    torch.testing.assert_close(mid.norm(dim=-1), torch.ones(4))
    (emb.sum() + mid.sum()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient (DDP would fail): {no_grad}"
    model.eval()
    with torch.inference_mode():
        out = model.backbone(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        )
        middle = out.hidden_states[len(out.hidden_states) // 2]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        want = torch.nn.functional.normalize((middle * mask).sum(1) / mask.sum(1), dim=-1)
        torch.testing.assert_close(model(**batch, return_mid=True)[1], want)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sentence_transformers_round_trip(tiny_model_path, tmp_path, pooling):
    from sentence_transformers import SentenceTransformer

    ours = Encoder.from_pretrained(tiny_model_path, pooling=pooling, device="cpu")
    ours.max_seq_length = 48
    folder = save_pretrained_st(ours, tmp_path / "st")
    assert (tmp_path / "st" / "model.safetensors").is_file()
    assert not list((tmp_path / "st").glob("*.bin"))
    assert (
        json.loads((tmp_path / "st" / "sentence_bert_config.json").read_text())["max_seq_length"]
        == 48
    )
    assert read_st_settings(folder).pooling == pooling

    st = SentenceTransformer(folder, device="cpu")
    assert st.max_seq_length == 48
    want = ours.encode(TEXTS, max_length=48)
    np.testing.assert_allclose(st.encode(TEXTS, convert_to_numpy=True), want, atol=1e-5)

    other = "cls" if pooling == "mean" else "mean"
    with pytest.warns(UserWarning, match="folder's"):
        reloaded = Encoder.from_pretrained(folder, pooling=other, device="cpu")
    assert (reloaded.pooling, reloaded.normalize, reloaded.max_seq_length) == (pooling, True, 48)
    np.testing.assert_allclose(reloaded.encode(TEXTS, max_length=48), want, atol=1e-6)


def test_packaged_folder_settings_are_read():
    from pipeline.model.loading import packaged_model_path

    settings = read_st_settings(packaged_model_path())
    assert (settings.pooling, settings.normalize, settings.max_seq_length) == ("mean", True, 256)


def test_tiny_decoder_left_padded_last_token_equals_unpadded(tmp_path, tiny_model_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2)
    config.bos_token_id = config.eos_token_id = tokenizer.sep_token_id
    torch.manual_seed(0)
    GPT2Model(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = Encoder.from_pretrained(tmp_path, pooling="last_token", device="cpu")
    model.tokenizer.padding_side = "left"
    batched = model.encode(TEXTS, max_length=32, batch_size=4)
    one_by_one = np.concatenate([model.encode([t], max_length=32) for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    ids = tokenize(model.tokenizer, TEXTS[:1], 32)["input_ids"]
    with torch.inference_mode():
        hidden = model.backbone(input_ids=torch.tensor(ids)).last_hidden_state  # [1, T, H]
    want = torch.nn.functional.normalize(hidden[0, -1], dim=-1).numpy()
    np.testing.assert_allclose(batched[0], want, atol=1e-5)


def test_ray_actor_pool_encoding_equals_in_process(ray_session, tiny_model_path, encoder):
    from pipeline.model.ray_encode import encode_dataset

    texts = [f"document {i}: " + " ".join(["token"] * (i % 17)) for i in range(100)]
    ds = ray_session.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = encode_dataset(
        ds, tiny_model_path, text_column="text", max_length=32, batch_size=25, num_actors=2
    )
    rows = sorted(out.take_all(), key=lambda row: row["id"])
    got = np.stack([row["embedding"] for row in rows])
    np.testing.assert_allclose(got, encoder.encode(texts, max_length=32), atol=1e-5)
