"""Evaluate an encoder on the config's benchmarks: writes ``<run dir>/eval/eval.json`` and ``eval.md``.

python -m jobs.evaluate --config configs/demo.yaml
python -m jobs.evaluate --config configs/demo.yaml model=runs/demo/final   # any encoder folder
"""

from __future__ import annotations

import sys

from pipeline import storage
from pipeline.config import Config, parse_cli
from pipeline.eval.benchmarks import run_benchmarks
from pipeline.eval.table import eval_markdown
from pipeline.model.encoder import Encoder
from pipeline.model.loading import resolve_model_path


def main(cfg: Config) -> dict[str, dict[str, float]]:
    model_path = resolve_model_path(
        cfg.model.name_or_path, cfg.model.tiny_layers, cfg.model.tiny_hidden
    )
    print(f"[eval] model {cfg.model.name_or_path} -> {model_path}")
    encoder = Encoder.from_pretrained(
        model_path, pooling=cfg.model.pooling, normalize=cfg.model.normalize
    )
    results = run_benchmarks(
        encoder,
        cfg.eval.benchmarks,
        data_root=cfg.data.root,
        run_dir=cfg.run.dir,
        batch_size=cfg.eval.batch_size,
        sort_by_length=cfg.eval.sort_by_length,
        corpus_chunk=cfg.eval.corpus_chunk,
        max_length_query=cfg.model.max_length_query,
        max_length_passage=cfg.model.max_length_passage,
        max_length_sts=cfg.model.max_length_sts,
        instruction_ir=cfg.model.instruction_ir,
        instruction_sts=cfg.model.instruction_sts,
    )
    out_dir = storage.join(cfg.run.dir, "eval")
    storage.write_json(storage.join(out_dir, "eval.json"), results)
    table = eval_markdown(results, title=f"Evaluation of {cfg.model.name_or_path}")
    storage.write_bytes(storage.join(out_dir, "eval.md"), table.encode())
    print(table)
    print(
        f"[eval] wrote {storage.join(out_dir, 'eval.json')} and {storage.join(out_dir, 'eval.md')}"
    )
    return results


if __name__ == "__main__":
    main(parse_cli(sys.argv[1:], description=__doc__))
