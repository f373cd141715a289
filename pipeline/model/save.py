"""The sentence-transformers folder layout: write an encoder so ``SentenceTransformer(path)`` loads it,
and read the pooling / normalisation / max length back from such a folder.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.model.encoder import Encoder

# our pooling name -> the classic sentence-transformers flag that selects it
_POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "last_token": "pooling_mode_lasttoken",
}
_ALL_FLAGS = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)
# sentence-transformers >= 5 single-key names -> ours
_ST_MODE_NAMES = {"mean": "mean", "cls": "cls", "lasttoken": "last_token"}


@dataclass(frozen=True)
class StSettings:
    """What a sentence-transformers folder says about its head; ``None`` where it says nothing."""

    pooling: str | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pooling_from_config(config: dict, where: Path) -> str:
    mode = config.get("pooling_mode")
    if mode is None:  # classic layout: one boolean flag per mode
        active = [flag for flag in _ALL_FLAGS if config.get(flag)]
        ours = [name for name, flag in _POOLING_FLAGS.items() if flag in active]
        if len(active) != 1 or len(ours) != 1:
            raise ValueError(
                f"{where}: unsupported pooling flags {active}; need one of mean/cls/lasttoken"
            )
        return ours[0]
    if isinstance(mode, list) or mode not in _ST_MODE_NAMES:
        raise ValueError(
            f"{where}: unsupported pooling_mode {mode!r}; need one of mean/cls/lasttoken"
        )
    return _ST_MODE_NAMES[mode]


def read_st_settings(folder: str | os.PathLike) -> StSettings:
    """Pooling, normalisation and max length of a local sentence-transformers folder (empty otherwise)."""
    root = Path(folder)
    modules = _read_json(root / "modules.json")
    if not isinstance(modules, list):
        return StSettings()
    pooling = None
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config_path = root / module.get("path", "1_Pooling") / "config.json"
            config = _read_json(config_path)
            if isinstance(config, dict):
                pooling = _pooling_from_config(config, config_path)
    normalize = any(module.get("type", "").endswith("Normalize") for module in modules)
    st_config = _read_json(root / "sentence_bert_config.json") or {}
    return StSettings(
        pooling=pooling, normalize=normalize, max_seq_length=st_config.get("max_seq_length")
    )


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
    pooling_config.update({flag: flag == _POOLING_FLAGS[encoder.pooling] for flag in _ALL_FLAGS})
    pooling_config["include_prompt"] = True
    _write_json(root / "1_Pooling" / "config.json", pooling_config)
    _write_json(
        root / "sentence_bert_config.json",
        {"max_seq_length": encoder.max_seq_length, "do_lower_case": False},
    )
    return str(root)
