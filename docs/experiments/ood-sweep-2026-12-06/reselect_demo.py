"""Score the quick demo's fusion candidates and variants on the presets' dev objective (equal thirds
of STS-B dev, IR dev and TREC-QA train) and say which one the fuse stage now chooses.

    PYTHONPATH=. python docs/experiments/ood-sweep-2026-12-06/reselect_demo.py <demo run dir> out.json

The run directory is a finished `make demo` of the preset before TREC-QA train entered the objective:
training does not depend on the objective, so its checkpoints and fused variants are what the new
preset trains and fuses too; only the choice among them can change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.config import load_config
from pipeline.stages import fuse


def main(run_dir: str, out: str) -> None:
    run = Path(run_dir)
    cfg = load_config("demo", [f"run.root={run.parent}", f"run.name={run.name}"])
    selection = json.loads((run / "fuse" / "selection.json").read_text())
    models = {Path(path).name: path for path in selection["candidate_scores"]}
    models.update(selection["folders"])
    scores = {}
    for name, folder in models.items():
        scores[name] = fuse.dev_scores(cfg, folder)
        print(name, {k: round(v, 2) for k, v in scores[name].items()}, flush=True)
    chosen = max(scores, key=lambda name: scores[name]["dev_objective"])
    print(f"chosen on the thirds objective: {chosen}")
    Path(out).write_text(
        json.dumps({"objective": cfg.train.objective, "scores": scores, "chosen": chosen}, indent=1)
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
