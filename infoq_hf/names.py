"""The one rule for naming layers: policy keys, skip lists, checkpoint keys and table names.

A pattern names a layer when it equals the layer's module path, when one is a dot-suffix of the
other (`layers.0.mlp.up_proj` names `model.layers.0.mlp.up_proj`; a checkpoint saved with a class
prefix names the bare path), or, written `re:<regex>`, when the regex matches the whole path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from .linear_regex import LinearRegex

REGEX_PREFIX = "re:"


def is_regex(pattern: str) -> bool:
    return pattern.startswith(REGEX_PREFIX)


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> LinearRegex:
    """The regex of a `re:` pattern, matched in linear time (a pattern may come from a downloaded
    config.json); ValueError naming the pattern when it does not compile or is not supported."""
    try:
        return LinearRegex(pattern[len(REGEX_PREFIX) :])
    except re.error as e:
        raise ValueError(f"name pattern {pattern!r} is not a valid regex: {e}") from None


def suffix_related(a: str, b: str) -> bool:
    """Equal, or one is a dot-suffix of the other."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


@functools.lru_cache(maxsize=1 << 16)  # a policy is matched against the same names again and again
def name_matches(pattern: str, name: str) -> bool:
    if is_regex(pattern):
        return compile_regex(pattern).fullmatch(name) is not None
    return suffix_related(pattern, name)


def matching_names(pattern: str, names: Iterable[str]) -> list[str]:
    """The names a pattern names; an exact name alone when it is among them."""
    names = list(names)
    if not is_regex(pattern) and pattern in names:
        return [pattern]
    return [n for n in names if name_matches(pattern, n)]


def unique_match(pattern: str, names: Iterable[str]) -> str | None:
    """The one name a (non-regex) pattern names, or None when it names none or several."""
    hits = matching_names(pattern, names)
    return hits[0] if len(hits) == 1 else None


def any_matches(patterns: Iterable[str], name: str) -> bool:
    return any(name_matches(p, name) for p in patterns)


__all__ = [
    "REGEX_PREFIX",
    "any_matches",
    "compile_regex",
    "is_regex",
    "matching_names",
    "name_matches",
    "suffix_related",
    "unique_match",
]
