"""Tokenisation shared by training and inference: optional instruction prefix (masked out of pooling)
and dynamic padding of variable-length token lists into tensors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def instruction_prefix(instruction: str) -> str:
    """The paper's query prefix, ``"Instruction: {instruction} Query: "``; empty when no instruction."""
    return f"Instruction: {instruction} Query: " if instruction else ""


def tokenize(
    tokenizer, texts: Sequence[str], max_length: int, instruction: str = ""
) -> dict[str, list[list[int]]]:
    """Tokenise without padding. Returns ``input_ids``, ``attention_mask`` and ``pool_mask`` lists.

    ``pool_mask`` equals the attention mask except that the tokens of the instruction prefix are 0, so
    mean pooling sees only the text itself (special tokens such as [CLS]/[SEP] stay in, as in
    sentence-transformers).
    """
    prefix = instruction_prefix(instruction)
    enc = tokenizer(
        [prefix + t for t in texts],
        max_length=max_length,
        truncation=True,
        padding=False,
        return_offsets_mapping=bool(prefix),
        return_special_tokens_mask=bool(prefix),
    )
    input_ids = [list(ids) for ids in enc["input_ids"]]
    attention = [[1] * len(ids) for ids in input_ids]
    if not prefix:
        return {"input_ids": input_ids, "attention_mask": attention, "pool_mask": attention}
    cut = len(prefix)
    pool = [
        [
            0 if (not special and start < cut) else 1
            for (start, _), special in zip(offsets, specials)
        ]
        for offsets, specials in zip(enc["offset_mapping"], enc["special_tokens_mask"])
    ]
    return {"input_ids": input_ids, "attention_mask": attention, "pool_mask": pool}


def pad(
    sequences: Sequence[Sequence[int]] | Sequence[np.ndarray],
    masks: dict[str, Sequence[Sequence[int]]] | None = None,
    pad_id: int = 0,
    side: str = "right",
) -> dict[str, torch.Tensor]:
    """Pad token-id lists to the longest one: ``input_ids`` plus each mask in ``masks`` (padded with 0)."""
    longest = max((len(s) for s in sequences), default=0)
    n = len(sequences)
    # filled in numpy and wrapped once: torch warns when it wraps the read-only arrays Arrow hands out
    out = {"input_ids": np.full((n, longest), pad_id, dtype=np.int64)}
    for name in masks or {}:
        out[name] = np.zeros((n, longest), dtype=np.int64)
    for i, ids in enumerate(sequences):
        span = slice(longest - len(ids), longest) if side == "left" else slice(0, len(ids))
        out["input_ids"][i, span] = ids
        for name, values in (masks or {}).items():
            out[name][i, span] = values[i]
    return {name: torch.from_numpy(array) for name, array in out.items()}
