"""What a fusion method file declares, in one ``SPEC``: its name, its per-tensor function (or a scored
search over fused models), and its knobs. The registry, the selection grid, ``FusionConfig``'s fields
and checks, and ``bench/demo_floor.py`` all read the spec; nothing here imports torch, so
``pipeline.config`` builds its fields from the specs without loading it.

    SPEC = MethodSpec(
        name="task_arithmetic",
        fn=task_arithmetic_merge,                     # fn(θ_0, [δ_k], **knobs) -> fused θ
        knobs=(Knob("lam", "ta_lambda", float, default=(0.5, 0.7, 1.0), grid=True),),
    )

A knob is one keyword of ``fn`` set by one ``fusion.<field>`` of the config: a grid knob's field is
a list and selection tries every value (crossed with the method's other grid knobs); any other knob
takes the field's one value.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Protocol

from pydantic import Field

TensorFn = Callable[..., Any]  # fn(θ_0: Tensor, δ: list[Tensor], **knobs) -> Tensor
PrepareFn = Callable[..., dict[str, Any]]  # prepare((name, θ_0, [δ_k]) stream, **knobs) -> knobs
ScoreFn = Callable[[str], float]  # folder -> dev score, higher is better; never test data


class SearchResult(Protocol):
    """What a search returns: the folder of the model it chose and that model's dev score."""

    folder: str
    score: float


# search(base, candidates, out_dir, score_fn, *, candidate_scores) -> SearchResult
SearchFn = Callable[..., SearchResult]


@dataclasses.dataclass(frozen=True)
class Knob:
    """One keyword argument of a method's function and the ``fusion.<field>`` that sets it.

    Attributes:
        arg: the function's keyword, e.g. ``"power"``.
        field: the ``FusionConfig`` field (a key users write), e.g. ``"delta_power"``.
        value_type: the type of one value: ``float``, ``int``, ``str`` or a ``Literal[...]``.
        default: the field's default: the default grid (a tuple) for a grid knob, else one value.
        grid: the field is a list and selection tries each of its values.
        bounds: pydantic constraints on each value, e.g. ``{"gt": 0.0, "le": 1.0}``.
    """

    arg: str
    field: str
    value_type: Any
    default: Any
    grid: bool = False
    bounds: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def config_field(self) -> tuple[Any, Any]:
        """``(annotation, FieldInfo)`` of this knob's ``FusionConfig`` field (for ``create_model``)."""
        value = Annotated[self.value_type, Field(**self.bounds)]
        if self.grid:
            return list[value], Field(default_factory=lambda: list(self.default))
        return value, Field(self.default)

    def values(self, settings: Mapping[str, Any]) -> list[Any]:
        """The values selection tries: ``settings[field]`` (the knob's default when absent), as a
        list of one for a non-grid knob; numbers cast to ``value_type`` (``1`` -> ``1.0``)."""
        value = settings.get(self.field, self.default)
        cast = self.value_type if isinstance(self.value_type, type) else (lambda v: v)
        return [cast(v) for v in (value if self.grid else [value])]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A fusion method: a per-tensor ``fn`` run by ``stream.fuse`` (with an optional first pass
    ``prepare`` for statistics one tensor cannot give), or a ``search`` that fuses and scores
    models itself (greedy soup), with ``search_scorings`` counting the dev scorings it runs.

    Attributes:
        name: the name in ``fusion.methods`` and in variant names, e.g. ``"delta"``.
        fn: ``fn(θ_0, [δ_1 .. δ_K], **knobs) -> fused θ`` for one tensor; None for a search.
        prepare: ``prepare(iter of (name, θ_0, [δ_k]), **knobs) -> extra knobs`` or None.
        knobs: the keywords of ``fn`` the config sets, in the order variant names show them.
        search: ``search(base, candidates, out_dir, score_fn, *, candidate_scores)`` returning
            a ``SearchResult``; None for a per-tensor method.
        search_scorings: ``(K candidates, the methods tried) -> dev scorings`` the search runs
            beyond the candidates' own (``bench/demo_floor.py`` prices them).
    """

    name: str
    fn: TensorFn | None = None
    prepare: PrepareFn | None = None
    knobs: tuple[Knob, ...] = ()
    search: SearchFn | None = None
    search_scorings: Callable[[int, Sequence[str]], int] | None = None

    def __post_init__(self) -> None:
        if (self.fn is None) == (self.search is None):
            raise ValueError(f"fusion method {self.name!r}: give exactly one of fn and search")
        if self.search is not None and (self.knobs or self.search_scorings is None):
            raise ValueError(
                f"fusion method {self.name!r}: a search has no knobs and counts its scorings"
            )

    def variants(self, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The knob settings selection tries for this per-tensor method: every combination of its
        grid knobs' values, from ``settings`` (``FusionConfig`` fields; a missing one: its default)."""
        if self.fn is None:
            raise ValueError(f"fusion method {self.name!r} is a search, not a grid of settings")
        axes = [[(knob.arg, v) for v in knob.values(settings)] for knob in self.knobs]
        return [dict(combo) for combo in itertools.product(*axes)]

    def dev_scorings(self, k: int, methods: Sequence[str], settings: Mapping[str, Any]) -> int:
        """Dev scorings selection runs for this method with ``k`` candidates among ``methods``."""
        if self.search_scorings is not None:
            return self.search_scorings(k, methods)
        return len(self.variants(settings))


def knob_fields(specs: Iterable[MethodSpec]) -> dict[str, Knob]:
    """``FusionConfig`` field -> knob over ``specs``; a field two methods declare differently is
    refused (two methods may share a field only with the same declaration)."""
    fields: dict[str, Knob] = {}
    for spec in specs:
        for knob in spec.knobs:
            if fields.setdefault(knob.field, knob) != knob:
                raise ValueError(
                    f"fusion method {spec.name!r}: field {knob.field!r} is declared differently "
                    f"by another method ({fields[knob.field]})"
                )
    return fields
