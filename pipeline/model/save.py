"""Writing the sentence-transformers folder layout: ``save_pretrained_st`` writes an encoder so
``SentenceTransformer(path)`` loads it (``pipeline.model.st_settings`` reads its head back).

Written in the classic layout (``sentence_transformers.models.*`` module names, ``pooling_mode_*`` keys)
that sentence-transformers 2.x to 6.x all read:

    out_dir/
      config.json, model.safetensors, tokenizer files     the Hugging Face backbone (module 0)
      modules.json                                        Transformer -> Pooling [-> Normalize]
      sentence_bert_config.json                           {"max_seq_length": ...}
      1_Pooling/config.json                               the pooling mode
      2_Normalize/                                        present when the encoder L2-normalises
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.model.st_settings import ALL_POOLING_FLAGS, POOLING_FLAGS

if TYPE_CHECKING:
    from pipeline.model.encoder import Encoder


def _write_json(path: Path, obj: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def save_pretrained_st(encoder: Encoder, out_dir: str | os.PathLike) -> str:
    """Write ``encoder`` as a sentence-transformers folder (safetensors weights) and return its path."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    encoder.backbone.save_pretrained(root)  # safetensors: the transformers default
    encoder.tokenizer.save_pretrained(root)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if encoder.normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (root / "2_Normalize").mkdir(exist_ok=True)
    _write_json(root / "modules.json", modules)
    pooling_config: dict = {"word_embedding_dimension": encoder.dim}
    pooling_config.update(
        {flag: flag == POOLING_FLAGS[encoder.pooling] for flag in ALL_POOLING_FLAGS}
    )
    pooling_config["include_prompt"] = True
    _write_json(root / "1_Pooling" / "config.json", pooling_config)
    _write_json(
        root / "sentence_bert_config.json",
        {"max_seq_length": encoder.max_seq_length, "do_lower_case": False},
    )
    return str(root)
