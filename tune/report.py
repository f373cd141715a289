"""The sweep report: a Markdown table of the trials, ``trials.json``, ``best.json`` (the trials handed to
fusion) and ``pareto.png`` (IR dev against STS dev per trial, the front drawn, the fused model marked;
with one more panel per out-of-domain ``dev:<benchmark>`` of the objective, that score against the
in-domain mean of STS and IR dev)."""

from __future__ import annotations

import math

from pipeline import storage
from pipeline.report.tradeoff import Panel, pareto_front, plot_pareto_panels
from tune.runner import TrialRow


def _short(key: str) -> str:
    return key.split(".", 1)[-1]


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _score(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def trial_label(row: TrialRow) -> str:
    """How a trial is named in the table and on the plot."""
    return f"{row.trial_id}{' (baseline)' if row.baseline else ''}"


def extra_keys(rows: list[TrialRow]) -> list[str]:
    """The ``dev:<benchmark>`` scores any trial reported, in first-seen order."""
    return list(dict.fromkeys(key for r in rows for key in r.extra))


def trials_table(rows: list[TrialRow], fused: dict | None = None) -> str:
    """Markdown: one line per trial (its swept values, best dev scores, status), the fused model last."""
    keys = list(rows[0].params) if rows else []
    extras = extra_keys(rows)
    head = ["trial", *map(_short, keys), "best step", "dev STS", "dev IR nDCG@10", *extras]
    head.append("objective")
    lines = ["| " + " | ".join([*head, "status"]) + " |", "|" + "---|" * (len(head) + 1)]
    for r in rows:
        cells = [trial_label(r), *(_value(r.params[k]) for k in keys), str(r.best_step)]
        cells += [_score(r.dev_sts), _score(r.dev_ir)]
        cells += [_score(r.extra.get(key, math.nan)) for key in extras]
        cells += [f"**{_score(r.objective)}**", r.status]
        lines.append("| " + " | ".join(cells) + " |")
    if fused:
        cells = [f"{fused['name']} of the best {len(fused['of'])}", *([""] * len(keys)), ""]
        cells += [_score(fused["dev_sts"]), _score(fused["dev_ir"])]
        cells += [_score(fused.get("extra", {}).get(key, math.nan)) for key in extras]
        cells.append(f"**{_score(fused['objective'])}**")
        lines.append("| " + " | ".join([*cells, "fused on dev"]) + " |")
    return "\n".join(lines)


def _panels(rows: list[TrialRow], fused: dict | None, title: str) -> list[Panel]:
    """IR dev against STS dev, then each out-of-domain dev score against the in-domain mean."""
    scored = [(trial_label(r), r.dev_sts, r.dev_ir, r.extra) for r in rows]
    if fused:
        scored.append((fused["name"], fused["dev_sts"], fused["dev_ir"], fused.get("extra", {})))
    panels = [
        Panel(
            {
                name: (sts, ir)
                for name, sts, ir, _ in scored
                if not (math.isnan(sts) or math.isnan(ir))
            },
            xlabel="STS dev Spearman (x100)",
            ylabel="IR dev nDCG@10 (x100, BM25 pool)",
            title=f"{title}: trials on dev (up and right is better)",
        )
    ]
    for key in extra_keys(rows):
        points = {
            name: ((sts + ir) / 2, extra[key])
            for name, sts, ir, extra in scored
            if key in extra and not (math.isnan(sts) or math.isnan(ir) or math.isnan(extra[key]))
        }
        panels.append(
            Panel(
                points,
                xlabel="in-domain dev: mean of STS dev and IR dev (x100)",
                ylabel=f"out-of-domain {key} (x100)",
                title="in-domain gain against out-of-domain retrieval",
            )
        )
    return panels


def verdict(rows: list[TrialRow]) -> str:
    """Whether the best trial beats the baseline (the config's own values) on the dev objective."""
    scored = [r for r in rows if not math.isnan(r.objective)]
    base = next((r for r in scored if r.baseline), None)
    if not scored or base is None:
        return "No baseline trial finished with a dev score: no comparison."
    best = max(scored, key=lambda r: r.objective)
    if best is base:
        return f"The baseline config is the best trial (dev objective {base.objective:.2f})."
    return (
        f"Best trial {best.trial_id}: dev objective {best.objective:.2f} against the baseline's "
        f"{base.objective:.2f} ({best.objective - base.objective:+.2f})."
    )


def write_sweep_report(
    folder: str, rows: list[TrialRow], best: list[TrialRow], fused: dict | None, title: str
) -> dict[str, str]:
    """Write ``sweep.md``, ``trials.json``, ``best.json`` and ``pareto.png`` into ``folder``."""
    paths = {
        name: storage.join(folder, file)
        for name, file in (
            ("report", "sweep.md"),
            ("trials", "trials.json"),
            ("best", "best.json"),
            ("pareto", "pareto.png"),
        )
    }
    storage.write_json(paths["trials"], [r.to_json() for r in rows])
    storage.write_json(
        paths["best"],
        {
            "trials": [
                {
                    "trial": r.trial_id,
                    "checkpoint": r.checkpoint,
                    "objective": r.objective,
                    "params": r.params,
                }
                for r in best
            ]
        },
    )
    chosen = fused["name"] if fused else trial_label(best[0]) if best else ""
    panels = _panels(rows, fused, title)
    plot_pareto_panels(
        panels,
        paths["pareto"],
        chosen=chosen,
        chosen_label="fused (chosen on dev)" if fused else "best trial",
    )
    fronts = [
        f"Pareto front ({panel.xlabel.split(' (')[0]}; {panel.ylabel.split(' (')[0]}): "
        + (", ".join(pareto_front(panel.points)) or "–")
        + "."
        for panel in panels
    ]
    body = [
        f"# {title}",
        "",
        trials_table(rows, fused),
        "",
        verdict(rows),
        *fronts,
        "",
        "![pareto](pareto.png)",
        "",
    ]
    storage.write_bytes(paths["report"], "\n".join(body).encode())
    return paths
