"""Reading a sentence-transformers folder: the pooling, normalisation and max length its head
declares (``read_st_settings``), and the layout's pooling flags, which ``pipeline.model.save``
writes. Both the classic layout (``pooling_mode_*`` flags, what ``save`` writes) and
sentence-transformers >= 5's single ``pooling_mode`` key are read:

    folder/
      modules.json                 Transformer -> Pooling [-> Normalize]
      sentence_bert_config.json    {"max_seq_length": ...}
      1_Pooling/config.json        the pooling mode
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# our pooling name -> the classic sentence-transformers flag that selects it
POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "last_token": "pooling_mode_lasttoken",
}
ALL_POOLING_FLAGS = (
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
        active = [flag for flag in ALL_POOLING_FLAGS if config.get(flag)]
        ours = [name for name, flag in POOLING_FLAGS.items() if flag in active]
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
