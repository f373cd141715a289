"""The text encoder: any Hugging Face ``AutoModel`` plus pooling and optional L2 normalisation.

Trainable (``forward`` on token tensors, optional gradient checkpointing, middle-layer embeddings for
MidNCE) and usable for inference (``encode`` on strings: batches sorted by length, original order
restored, ``torch.inference_mode``; float32, or bf16 autocast on a CUDA device when asked for).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from pipeline.model.pooling import POOLING_MODES, pool
from pipeline.model.st_settings import read_st_settings
from pipeline.model.tokenize import pad, tokenize


def _load_backbone(path: str) -> nn.Module:
    """AutoModel without BERT's unused pooler head (it would leave DDP with gradient-less parameters)."""
    try:
        model = AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:  # architectures without a pooler head reject the argument
        model = AutoModel.from_pretrained(path)
    return model.float()


def _load_tokenizer(path: str):
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # decoders: pad with EOS (last-token pooling ignores padding)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _enable_checkpointing(backbone: nn.Module) -> None:
    """Activation checkpointing (non-reentrant); transformers 5 renamed the method."""
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _first_given(*values):
    return next(value for value in values if value is not None)


def autocast_dtype(device: torch.device, bf16: bool) -> torch.dtype | None:
    """The autocast dtype of inference on ``device``: bf16 only when asked for, on CUDA, and where
    the GPU supports it (``torch.cuda.is_bf16_supported()``); otherwise None (float32)."""
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


class Encoder(nn.Module):
    """Backbone -> pooling -> (L2 normalisation); one embedding per text."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        *,
        pooling: str = "mean",
        normalize: bool = True,
        max_seq_length: int = 512,
        name_or_path: str = "",
        bf16: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling={pooling!r}: expected one of {POOLING_MODES}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.name_or_path = name_or_path
        self.bf16 = bf16  # bf16 autocast in ``encode`` (on a CUDA device that supports it)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        pooling: str | None = None,
        normalize: bool | None = None,
        gradient_checkpointing: bool = False,
        device: str | torch.device | None = None,
        bf16: bool = False,
        max_seq_length: int | None = None,
    ) -> Encoder:
        """Load a Hugging Face or sentence-transformers folder (weights in float32); ``encode``
        runs in float32 unless ``bf16`` asks for bf16 autocast (CUDA only, see :func:`autocast_dtype`).
        ``max_seq_length`` replaces the folder's (what a saved copy truncates at when served).

        A sentence-transformers folder's own head wins: its ``1_Pooling`` mode and its ``Normalize``
        module (the weights were trained with them); a contradicting argument only gets a warning.
        Plain Hugging Face folders use the arguments (defaults ``"mean"``, ``True``).
        """
        path = str(path)
        settings = read_st_settings(path)
        for name, asked, stored in (
            ("pooling", pooling, settings.pooling),
            ("normalize", normalize, settings.normalize),
        ):
            if asked is not None and stored is not None and asked != stored:
                warnings.warn(
                    f"{path}: {name}={asked!r} ignored, the folder's {stored!r} is used",
                    stacklevel=2,
                )
        backbone = _load_backbone(path)
        tokenizer = _load_tokenizer(path)
        if gradient_checkpointing:
            _enable_checkpointing(backbone)
        positions = getattr(backbone.config, "max_position_embeddings", None) or 512
        encoder = cls(
            backbone,
            tokenizer,
            pooling=_first_given(settings.pooling, pooling, "mean"),
            normalize=_first_given(settings.normalize, normalize, True),
            max_seq_length=max_seq_length
            or settings.max_seq_length
            or min(tokenizer.model_max_length, positions),
            name_or_path=path,
            bf16=bf16,
        )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return encoder.to(
            device
        ).eval()  # as transformers' from_pretrained; training calls .train()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.backbone.config.hidden_size)

    def _finish(self, hidden: torch.Tensor, attention_mask, pool_mask) -> torch.Tensor:
        pooled = pool(hidden, attention_mask, self.pooling, pool_mask)  # [B, D]
        return F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pool_mask: torch.Tensor | None = None,
        return_mid: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [B, D] of padded token ids [B, T]; with ``return_mid`` also the middle layer's
        (``hidden_states[len // 2]``, pooled and normalised the same way).

        A left-padded batch gets position ids counted from each row's first real token, so its rows
        embed exactly as they would unpadded (decoders pad on the left).
        """
        extra = {}
        if not bool(attention_mask[:, 0].all()):  # left padding
            extra["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=return_mid,
            **extra,
        )
        embeddings = self._finish(out.last_hidden_state, attention_mask, pool_mask)
        if not return_mid:
            return embeddings
        states = out.hidden_states  # embeddings output + one per layer
        return embeddings, self._finish(states[len(states) // 2], attention_mask, pool_mask)

    def _autocast(self):
        dtype = autocast_dtype(self.device, self.bf16)
        return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)

    def encode(
        self,
        texts: Sequence[str],
        *,
        max_length: int,
        instruction: str = "",
        batch_size: int = 64,
        sort_by_length: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` -> float32 [N, D] in input order (batches formed longest-first when sorting);
        ``progress(done, total)`` is called after each batch."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        features = tokenize(self.tokenizer, list(texts), max_length, instruction)
        ids = features["input_ids"]
        if sort_by_length:
            order = np.argsort([-len(seq) for seq in ids], kind="stable")
        else:
            order = np.arange(len(ids))
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(ids), batch_size):
                rows = order[start : start + batch_size]
                batch = pad(
                    [ids[i] for i in rows],
                    masks={
                        name: [features[name][i] for i in rows]
                        for name in ("attention_mask", "pool_mask")
                    },
                    pad_id=self.tokenizer.pad_token_id,
                    side=self.tokenizer.padding_side,
                )
                batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
                out[rows] = self(**batch).float().cpu().numpy()
                if progress is not None:
                    progress(start + len(rows), len(ids))
        self.train(was_training)
        return out
