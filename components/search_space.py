"""The tune step's search space: the default ranges (declared by the framework, the task and the
loss table), the ``--space`` CLI form and Ray Tune domains.

A space is ``{"<dotted config key>": [kind, low, high] | ["choice", [values]] | None}`` (``None``:
the key's default range), ``kind`` one of ``uniform``, ``loguniform``.

>>> parse_space(["loss.image=loguniform:10:300", "loss.gan=choice:0.5,1,2", "loss.structure"])
{'loss.image': ['loguniform', 10.0, 300.0], 'loss.gan': ['choice', [0.5, 1, 2]], 'loss.structure': None}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from components.step import StepInputError
from gan_core.config import TrainConfig

__all__ = ["default_search_space", "resolve_space", "parse_space", "format_space", "to_domain"]


def default_search_space(cfg: TrainConfig, named: Iterable[str] = ()) -> dict[str, list]:
    """``{"<dotted key>": [kind, low, high]}``: the framework's ``search_space`` plus the task's
    (the framework's range wins for a key both declare), plus, for each key in ``named`` that
    neither declares, the loss table's default range of that Table-5 term (``loss.structure``).

    >>> from components.step import build_config
    >>> default_search_space(build_config("cyclegan", "tiny"))["loss.cycle"]
    ['loguniform', 1.0, 30.0]
    >>> default_search_space(build_config("pix2pix", "tiny"), ["loss.structure"])["loss.structure"]
    ['uniform', 0.0, 20.0]
    """
    from gan_core.frameworks import get_framework
    from gan_core.losses import TERMS
    from gan_core.tasks import get_task

    try:
        space = dict(get_framework(cfg.framework).search_space)
        task_space = get_task(cfg.task.name).search_space
    except KeyError as e:
        raise StepInputError(str(e.args[0])) from None
    for key, rng in task_space.items():
        space.setdefault(key, rng)
    for key in named:
        if key in space:
            continue
        section, _, term = key.partition(".")
        if section != "loss" or term not in TERMS:
            raise StepInputError(f"search space {key!r}: no default range (the loss table has "
                                 f"loss.<term> for {list(TERMS)}); give KEY=KIND:LOW:HIGH")
        space[key] = TERMS[term].search
    return {k: list(v) for k, v in space.items()}


def to_domain(key: str, spec: Any) -> Any:
    """A Ray Tune domain from ``[kind, low, high]`` / ``{"type", "low", "high"}`` /
    ``["choice", [values]]``, a Tune domain (kept) or a constant (kept).

    >>> d = to_domain("loss.image", ["loguniform", 10, 300]); (d.lower, d.upper)
    (10.0, 300.0)
    """
    from ray import tune
    from ray.tune.search.sample import Domain

    if isinstance(spec, Domain) or isinstance(spec, (int, float, str, bool)):
        return spec
    if isinstance(spec, dict):
        kind = spec.get("type")
        args = [spec.get("values")] if kind == "choice" else [spec.get("low"), spec.get("high")]
    elif isinstance(spec, (list, tuple)) and spec:
        kind, args = spec[0], list(spec[1:])
    else:
        raise StepInputError(f"search space {key!r}: expected [kind, low, high], got {spec!r}")
    try:
        if kind == "uniform":
            lo, hi = (float(a) for a in args)
            return tune.uniform(lo, hi)
        if kind == "loguniform":
            lo, hi = (float(a) for a in args)
            if lo <= 0:
                raise ValueError("loguniform needs low > 0")
            return tune.loguniform(lo, hi)
        if kind == "choice":
            (values,) = args
            return tune.choice(list(values))
    except (TypeError, ValueError) as e:
        raise StepInputError(f"search space {key!r}: bad bounds {args!r} for {kind!r} ({e})") from None
    raise StepInputError(f"search space {key!r}: unknown kind {kind!r}; "
                         f"expected uniform, loguniform or choice")


def parse_space(items: list[str] | None) -> dict[str, list | None] | None:
    """``["loss.image=loguniform:10:300", "loss.gan=choice:0.5,1,2", "loss.structure"]`` -> spec
    dict (a bare key: ``None``, its default range)."""
    if not items:
        return None
    out: dict[str, list | None] = {}
    for item in items:
        key, sep, rhs = item.partition("=")
        parts = rhs.split(":")
        if not sep and key.strip():
            out[key.strip()] = None
            continue
        if not sep or len(parts) < 2:
            raise StepInputError(f"--space expects KEY=KIND:LOW:HIGH, KEY=choice:A,B,... or KEY, got {item!r}")
        if parts[0] == "choice":
            out[key.strip()] = ["choice", [json.loads(v) for v in parts[1].split(",")]]
        elif len(parts) == 3:
            out[key.strip()] = [parts[0], float(parts[1]), float(parts[2])]
        else:
            raise StepInputError(f"--space {item!r}: expected KIND:LOW:HIGH")
    return out


def resolve_space(base: TrainConfig, search_space: dict[str, Any] | None) -> dict[str, list]:
    """The search space to run: ``search_space`` (:func:`parse_space`'s dict; a ``None`` value
    takes its default range) or, when ``None``, :func:`default_search_space`; every key must be
    a field of ``base``.

    >>> from components.step import build_config
    >>> resolve_space(build_config("pix2pix", "tiny"), {"loss.image": ["uniform", 1, 2]})
    {'loss.image': ['uniform', 1, 2]}
    >>> resolve_space(build_config("pix2pix", "tiny"), {"optim.nope": ["uniform", 1, 2]})
    Traceback (most recent call last):
    ...
    components.step.StepInputError: search_space: unknown config fields ['optim.nope']; expected dotted keys such as ['loss.gan', 'loss.image']
    """
    if search_space is None:
        spec = default_search_space(base)
    else:
        defaults = default_search_space(base, [k for k, v in search_space.items() if v is None])
        spec = {k: defaults[k] if v is None else v for k, v in search_space.items()}
    if not spec:
        raise StepInputError("search_space is empty: nothing to tune")
    unknown = sorted(set(spec) - set(base.flat()))
    if unknown:
        raise StepInputError(f"search_space: unknown config fields {unknown}; expected dotted "
                             f"keys such as {sorted(default_search_space(base))}")
    return spec


def format_space(space: dict[str, list | None]) -> list[str]:
    """:func:`parse_space`'s inverse: the ``--space`` items that rebuild ``space``.

    >>> format_space({"loss.image": ["loguniform", 10, 300], "loss.gan": ["choice", [0.5, 1]],
    ...               "loss.structure": None})
    ['loss.image=loguniform:10:300', 'loss.gan=choice:0.5,1', 'loss.structure']
    """
    out = []
    for k, spec in space.items():
        if spec is None:
            out.append(k)
        elif spec[0] == "choice":
            out.append(f"{k}=choice:{','.join(json.dumps(v) for v in spec[1])}")
        else:
            kind, low, high = spec
            out.append(f"{k}={kind}:{low!r}:{high!r}")
    return out
