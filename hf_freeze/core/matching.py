"""The one matcher: a pattern matches whole dot-separated segments of a parameter name.

A user pattern ``P`` is tried as ``(?:^|\\.)(?:P)(?:\\.|$)`` with ``re.search``, so

>>> matches(compile_pattern("embeddings"), "bert.embeddings.word_embeddings.weight")
True
>>> matches(compile_pattern("layer.1"), "bert.encoder.layer.10.output.dense.bias")
False
>>> matches(compile_pattern("id"), "text_id.weight")
False
>>> matches(compile_pattern("classifier"), "pre_classifier.weight")
False

Everything that selects parameters by pattern (freeze, unfreeze, the layer-stack name) goes
through :func:`compile_pattern` and :func:`matches`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from ..errors import InvalidPatternError


def compile_pattern(pattern: str, option: str = "freeze") -> re.Pattern[str]:
    """Compile ``pattern`` so that it matches whole segments; ``option`` names it in errors."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidPatternError(
            f"`{option}` holds {pattern!r}: each pattern must be a non-empty string (a Python regex "
            "matched against whole dot-separated segments of a parameter name, e.g. 'encoder.layer.0')."
        )
    try:
        return re.compile(rf"(?:^|\.)(?:{pattern})(?:\.|$)")
    except re.error as err:
        raise InvalidPatternError(
            f"`{option}` pattern {pattern!r} is not a valid Python regular expression: {err}. "
            "Escape special characters (for example '\\.' or '\\[') or fix the expression."
        ) from None


def matches(compiled: re.Pattern[str], name: str) -> bool:
    """True when the compiled pattern matches whole segments of ``name``."""
    return compiled.search(name) is not None


def closest_names(pattern: str, names: Iterable[str], n: int = 5) -> list[str]:
    """The names most similar to ``pattern``, to suggest a fix for a pattern that matched nothing."""
    names = list(dict.fromkeys(names))
    close = difflib.get_close_matches(pattern, names, n=n, cutoff=0.3)
    if len(close) < n:
        # Also compare against single segments and prefixes, which is what users usually type.
        prefixes = {}
        for name in names:
            parts = name.split(".")
            for k in range(1, len(parts)):
                prefixes.setdefault(".".join(parts[:k]), None)
        for extra in difflib.get_close_matches(pattern, list(prefixes), n=n, cutoff=0.3):
            if extra not in close:
                close.append(extra)
    return close[:n]
