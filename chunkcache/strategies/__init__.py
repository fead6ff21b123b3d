"""Reuse strategies (DESIGN section 3), one file each, and a parser for ``name[:param=value,...]`` specs."""

from __future__ import annotations

from chunkcache.strategies.ape import APE
from chunkcache.strategies.base import Plan, Request, Strategy
from chunkcache.strategies.cacheblend import CacheBlend
from chunkcache.strategies.cachecraft import CacheCraft
from chunkcache.strategies.epic import Epic
from chunkcache.strategies.focus import Focus
from chunkcache.strategies.full import Full
from chunkcache.strategies.graph import Graph
from chunkcache.strategies.naive import Naive
from chunkcache.strategies.parallel import Parallel
from chunkcache.strategies.prefix import Prefix
from chunkcache.strategies.relevance import Relevance

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Full, Prefix, Naive, Epic, CacheBlend, CacheCraft, Focus, Relevance, APE, Parallel,
                                Graph)
}
DEFAULT_STRATEGY = "relevance"


def make_strategy(spec: str) -> Strategy:
    """Build a strategy from ``"name"`` or ``"name:param=value,..."`` (e.g. ``cacheblend:ratio=0.3``)."""
    name, _, params = spec.strip().partition(":")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    kwargs: dict[str, object] = {}
    for item in filter(None, params.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"strategy parameter {item!r} is not key=value")
        try:
            kwargs[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            kwargs[key.strip()] = value.strip()
    try:
        return STRATEGIES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad parameters for strategy {name!r}: {e}") from None


__all__ = ["STRATEGIES", "DEFAULT_STRATEGY", "Plan", "Request", "Strategy", "make_strategy"]
