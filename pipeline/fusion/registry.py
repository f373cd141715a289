"""The fusion methods by name: each method file's ``SPEC`` (see ``pipeline.fusion.spec``), registered in
the order ``fusion.methods`` lists them by default. Adding a method is one file declaring ``SPEC`` and
one line in ``BUILT_IN``; selection, ``FusionConfig`` (``fusion.methods`` and a field per knob) and
``bench/demo_floor.py`` read it from here. No torch at import: ``pipeline.config`` imports this.
"""

from __future__ import annotations

import importlib

from pipeline.fusion.spec import Knob, MethodSpec, knob_fields

BUILT_IN = (
    "pipeline.fusion.delta",
    "pipeline.fusion.soup",
    "pipeline.fusion.greedy",
    "pipeline.fusion.task_arithmetic",
    "pipeline.fusion.ties",
)

METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` under its name (a name already taken, or a knob field declared differently by
    another method, is a ``ValueError``); returns it."""
    if spec.name in METHODS:
        raise ValueError(f"fusion method {spec.name!r} is registered twice")
    knob_fields([*METHODS.values(), spec])
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``, or a ``ValueError`` listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown fusion method {name!r}; known: {list(METHODS)}")
    return METHODS[name]


def knobs() -> dict[str, Knob]:
    """``FusionConfig`` field -> knob, over every registered method."""
    return knob_fields(METHODS.values())


for _module in BUILT_IN:
    register(importlib.import_module(_module).SPEC)
