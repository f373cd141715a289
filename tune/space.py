"""The search space of a sweep and the search algorithm that samples it.

``tune.space`` in the config maps a dotted config key to a distribution::

    loss.w_pearson: {loguniform: [0.5, 8.0]}
    sampler.mode:   {choice: [proportional, ratio, temperature]}

An empty ``tune.space`` means :data:`DEFAULT_SPACE`. The first trial always runs the config's own
values of the swept keys (the baseline every other trial is compared with).
"""

from __future__ import annotations

from typing import Any

from ray import tune

from pipeline.config import Config, ConfigError, with_overrides

DEFAULT_SPACE: dict[str, dict[str, list[Any]]] = {
    "sampler.mode": {"choice": ["proportional", "ratio", "temperature"]},
    "sampler.ir_ratio": {"uniform": [0.1, 0.6]},  # used by mode "ratio"
    "sampler.alpha": {"uniform": [0.0, 1.0]},  # used by mode "temperature"
    "loss.w_midnce": {"loguniform": [0.1, 4.0]},
    "loss.w_pro": {"loguniform": [0.1, 2.0]},
    "loss.w_pearson": {"loguniform": [0.5, 8.0]},
    "loss.w_rankkl": {"loguniform": [1.0, 20.0]},
    "loss.ir_temperature": {"loguniform": [0.01, 0.1]},
    "train.lr": {"loguniform": [5e-6, 1e-4]},
}

_DISTRIBUTIONS = {
    "uniform": lambda args: tune.uniform(*args),
    "loguniform": lambda args: tune.loguniform(*args),
    "choice": lambda args: tune.choice(list(args)),
}


def space_spec(cfg: Config) -> dict[str, dict[str, list[Any]]]:
    """``tune.space``, or the default space when it is empty."""
    return dict(cfg.tune.space) or dict(DEFAULT_SPACE)


def param_space(cfg: Config) -> dict[str, Any]:
    """The space as Tune domains; raises ``ConfigError`` naming a bad entry."""
    space = {}
    for key, spec in space_spec(cfg).items():
        if len(spec) != 1 or next(iter(spec)) not in _DISTRIBUTIONS:
            raise ConfigError(
                f"tune.space.{key}: expected one of {sorted(_DISTRIBUTIONS)} with its arguments, "
                f"got {spec}"
            )
        ((kind, args),) = spec.items()
        if kind != "choice" and (len(args) != 2 or not args[0] < args[1]):
            raise ConfigError(f"tune.space.{key}: {kind} needs [low, high] with low < high")
        baseline_params(cfg)  # every key must name a config field
        for value in args:  # the bounds and choices must be valid values of that field
            with_overrides(cfg, {key: value})
        space[key] = _DISTRIBUTIONS[kind](args)
    return space


def baseline_params(cfg: Config) -> dict[str, Any]:
    """The config's own value of every swept key: the sweep's first trial."""
    values = {}
    for key in space_spec(cfg):
        node: Any = cfg
        for part in key.split("."):
            if not hasattr(node, part):
                raise ConfigError(f"tune.space: {key!r} is not a config key")
            node = getattr(node, part)
        values[key] = node
    return values


def searcher(cfg: Config):
    """The search algorithm of ``tune.search``: ``random`` (Tune's variant generator, seeded) or
    ``optuna`` (TPE; the ``optuna`` extra). Both start with :func:`baseline_params`; the metric
    and mode come from the Tuner."""
    first = [baseline_params(cfg)]
    if cfg.tune.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(points_to_evaluate=first, seed=cfg.run.seed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(
        points_to_evaluate=first,
        random_state=cfg.run.seed,
        max_concurrent=cfg.tune.max_concurrent_trials,  # Tune only limits its own default searcher
    )
