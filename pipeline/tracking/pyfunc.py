"""The MLflow pyfunc model of the encoder: text in (a list of strings or a DataFrame with a ``text``
column or a single one), embeddings out (float32 [N, D]).

Logged as "models from code" (this file is the model's code, nothing is pickled); the
sentence-transformers folder is the model's artifact ``model`` and loads offline. Per-call params:
``max_length``, ``instruction`` (a prefix such as an IR query instruction), ``batch_size``.
"""

from __future__ import annotations

import os
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

from pipeline.model.encoder import Encoder

ARTIFACT = "model"  # key of the sentence-transformers folder in the model's artifacts
DEFAULT_BATCH_SIZE = 64


def encoder_signature(dim: int, max_length: int) -> ModelSignature:
    """Strings in, float32 [N, dim] out, and the per-call params with their defaults."""
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
        params=ParamSchema(
            [
                ParamSpec("max_length", DataType.long, max_length),
                ParamSpec("instruction", DataType.string, ""),
                ParamSpec("batch_size", DataType.long, DEFAULT_BATCH_SIZE),
            ]
        ),
    )


class EncoderModel(PythonModel):
    """Loads the encoder from the logged folder; ``predict`` embeds texts in input order."""

    def load_context(self, context: PythonModelContext) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.encoder = Encoder.from_pretrained(context.artifacts[ARTIFACT])
        self.max_length = int(
            (context.model_config or {}).get("max_length") or self.encoder.max_seq_length
        )

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Embeddings float32 [N, D] of the texts, in input order.

        MLflow's schema enforcement hands over a DataFrame (a list of strings becomes its one
        column); the texts are its ``text`` column, else its first. The ``DataFrame`` hint also keeps
        MLflow from replacing the logged signature with one inferred from type hints.
        """
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        params = params or {}
        return self.encoder.encode(
            model_input[column].astype(str).tolist(),
            max_length=int(params.get("max_length") or self.max_length),
            instruction=params.get("instruction") or "",
            batch_size=int(params.get("batch_size") or DEFAULT_BATCH_SIZE),
        )


if __name__ != "pipeline.tracking.pyfunc":  # run by MLflow as the model's code, not imported
    mlflow.models.set_model(EncoderModel())
