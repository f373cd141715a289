"""Evaluate an encoder on the config's benchmarks: writes ``<run dir>/eval/eval.json`` and ``eval.md``.

python -m jobs.evaluate --config configs/reproduce.yaml
python -m jobs.evaluate --config configs/reproduce.yaml model=runs/demo/final   # any encoder folder
"""

from __future__ import annotations

from pipeline import storage
from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.eval.table import eval_markdown
from pipeline.stages import evaluate


def main(cfg: Config) -> dict[str, dict[str, float]]:
    model_path = cfg.model.resolved_path()
    print(f"[eval] model {cfg.model.name_or_path} -> {model_path}")
    results = evaluate.evaluate_folder(cfg, model_path)
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
    run_main(main, description=__doc__)
