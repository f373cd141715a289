"""Fusion as Ray tasks: the same functions, scheduled by Ray (the only fusion module importing Ray).

    ref = fuse_remote.remote(base, candidates, out_dir, "delta", power=2.0)
    out = ray.get(ref)
    best, scores, folder = ray.get(fuse_and_select_remote.remote(base, cands, out_dir, score_fn=f))

``fuse_and_select_remote`` runs on whichever node Ray picks: its inputs may be local paths or URIs
(``file://``, ``s3://``, ``gs://``); remote ones are fetched to that node's disk and the results
published back to ``out_dir``, so no disk shared between nodes is assumed.
"""

from __future__ import annotations

import os

import ray

from pipeline import storage
from pipeline.fusion.select import fuse_and_select
from pipeline.fusion.stream import fuse

fuse_remote = ray.remote(num_cpus=1)(fuse)


@ray.remote(num_cpus=1)
def fuse_and_select_remote(
    base: str, candidates: list[str], out_dir: str, **kwargs
) -> tuple[str, dict[str, float], str]:
    """``fuse_and_select`` with inputs fetched to this node and ``selection.json``'s folders and
    candidate names given as ``out_dir`` / the candidates' own paths (``known_scores`` is keyed
    by those paths too)."""
    built = storage.build_dir(out_dir)
    local = {storage.fetch(c): c for c in candidates}
    fetched = {c: path for path, c in local.items()}
    known = {fetched[c]: s for c, s in (kwargs.pop("known_scores", None) or {}).items()}
    best, scores, folder = fuse_and_select(
        storage.fetch(base), list(local), built, known_scores=known, **kwargs
    )

    def published(path: str) -> str:
        return storage.join(out_dir, os.path.relpath(path, built))

    selection_path = os.path.join(built, "selection.json")
    selection = storage.read_json(selection_path)
    selection["folders"] = {m: published(f) for m, f in selection["folders"].items()}
    selection["candidate_scores"] = {
        local.get(c, c): s for c, s in selection["candidate_scores"].items()
    }
    storage.write_json(selection_path, selection)
    storage.publish_dir(built, out_dir)
    return best, scores, published(folder)
