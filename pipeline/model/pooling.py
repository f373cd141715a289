"""Pooling token states [B, T, D] into one vector per text [B, D]: mean, first token (CLS), last token.

Position-based modes find the first / last non-pad token from the attention mask, so they are correct for
both right padding (encoders) and left padding (decoders).
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "cls", "last_token")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where ``mask`` is 1 (padding and instruction tokens are 0).

    Accumulates in float32 when ``hidden`` is half precision.
    """
    acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    weights = mask.to(acc).unsqueeze(-1)  # [B, T, 1]
    summed = (hidden.to(acc) * weights).sum(dim=1)  # [B, D]
    counts = weights.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    return summed / counts


def _gather_position(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(hidden.size(0), device=hidden.device)
    return hidden[rows, index]  # [B, D]


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The state of the first non-pad token (the [CLS] token of BERT-like models)."""
    first = attention_mask.to(torch.int32).argmax(dim=1)  # first 1 in each row
    return _gather_position(hidden, first)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The state of the last non-pad token (decoders' summary token), for left or right padding."""
    length = attention_mask.size(1)
    last_from_end = attention_mask.flip(dims=[1]).to(torch.int32).argmax(dim=1)
    return _gather_position(hidden, length - 1 - last_from_end)


def pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    mode: str,
    pool_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool ``hidden`` [B, T, D] with ``mode``; mean pooling uses ``pool_mask`` (default: attention mask)."""
    if mode == "mean":
        return mean_pool(hidden, attention_mask if pool_mask is None else pool_mask)
    if mode == "cls":
        return cls_pool(hidden, attention_mask)
    if mode == "last_token":
        return last_token_pool(hidden, attention_mask)
    raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLING_MODES}")
