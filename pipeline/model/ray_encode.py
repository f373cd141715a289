"""Encoding a Ray Dataset with an actor pool: each actor loads the model once and embeds batches of rows.

    ds = ray.data.read_parquet("s3://bucket/corpus/")
    ds = encode_dataset(ds, "/models/final", text_column="text", max_length=256, pooling="mean",
                        batch_size=256, num_actors=8)
    ds.write_parquet("s3://bucket/corpus-embeddings/")   # adds an "embedding" column (float32 [D])

On the 2-core machine here actors must reserve a fraction of a CPU (``num_cpus_per_actor=0.5``), or the pool
starves Ray Data's own tasks. Ray is imported only in this module.
"""

from __future__ import annotations

import numpy as np
import ray

from pipeline.model.encoder import Encoder


class EncodeBatch:
    """The per-actor callable: ``{text_column: [B] str, ...}`` -> the same batch plus ``embedding`` [B, D]."""

    def __init__(
        self,
        model_path: str,
        *,
        text_column: str,
        max_length: int,
        pooling: str | None,
        instruction: str = "",
        batch_size: int = 64,
    ) -> None:
        self.encoder = Encoder.from_pretrained(model_path, pooling=pooling)
        self.text_column = text_column
        self.max_length = max_length
        self.instruction = instruction
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(text) for text in batch[self.text_column]]
        embeddings = self.encoder.encode(
            texts,
            max_length=self.max_length,
            instruction=self.instruction,
            batch_size=self.batch_size,
        )
        return {**batch, "embedding": embeddings}


def encode_dataset(
    ds: ray.data.Dataset,
    model_path: str,
    *,
    text_column: str,
    max_length: int,
    pooling: str | None = None,
    batch_size: int = 64,
    num_actors: int = 2,
    num_cpus_per_actor: float = 0.5,
    instruction: str = "",
) -> ray.data.Dataset:
    """``ds`` with an ``embedding`` column, computed by ``num_actors`` actors holding one model each.

    ``batch_size`` rows go to an actor per call (and through the model per forward pass); within a call
    the rows are sorted by length. ``pooling`` None: the folder's own (see ``Encoder.from_pretrained``).
    """
    return ds.map_batches(
        EncodeBatch,
        fn_constructor_kwargs={
            "model_path": model_path,
            "text_column": text_column,
            "max_length": max_length,
            "pooling": pooling,
            "instruction": instruction,
            "batch_size": batch_size,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=num_cpus_per_actor,
    )
