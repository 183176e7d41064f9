"""Command-line rules for the freezing options, shared by every parser that reads them.

Two argparse behaviours lose or refuse what a user typed, and both are fixed here, once, so the
recipes (``recipe_utils.make_parser``), ``hf-freeze inspect`` and a user's own ``HfArgumentParser``
script read the same flags the same way:

- ``nargs="+"`` keeps only the last occurrence of a repeated flag (``--freeze a --freeze b`` froze
  only ``b``). :class:`ExtendAction` keeps every value. ``FreezingTrainingArguments`` names it in the
  ``action`` metadata of its list fields, which ``HfArgumentParser`` (4.x and 5.x) hands to argparse,
  so a plain ``HfArgumentParser(FreezingTrainingArguments)`` gets it too.
- A value that starts with ``-`` is taken for an option unless it looks like a negative number, so
  ``--freeze_layers -2:`` failed with "expected one argument". That decision is made by the parser
  before any field's settings are consulted, so a dataclass field cannot fix it;
  :func:`accept_negative_values` teaches a parser (an ``HfArgumentParser`` too) to read such values.
  Without it, ``--freeze_layers=-2:`` always works.

Only ``argparse`` is imported here (``hf-freeze inspect`` must start fast).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

# A layer selection that starts with a minus sign: "-2:", "-3:-1", "-1", "-2:,0". Never an option name.
NEGATIVE_VALUE = r"^-\d[-\d:,]*$"


class ExtendAction(argparse.Action):
    """A repeatable list flag: ``--freeze a --freeze b c`` gives ``["a", "b", "c"]``.

    The first occurrence on the command line replaces the default (the dataclass default or a YAML
    value set with ``parser.set_defaults``), later ones add to it. So flags still override a config
    file, and no value typed on the command line is dropped. (argparse's own ``"extend"`` action would
    add to the YAML list instead of replacing it.)
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        # argparse puts the default object itself into the namespace; anything else was typed here
        items = [] if current is None or current is self.default else list(current)
        if isinstance(values, str) or values is None:
            values = [] if values is None else [values]
        items.extend(values)
        setattr(namespace, self.dest, items)


def accept_negative_values(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let ``parser`` read ``--freeze_layers -2:`` (a negative layer slice as its own argument).

    argparse treats an argument that starts with ``-`` as an option unless it matches the parser's
    negative-number pattern; this widens that pattern to negative slices and comma lists, keeping
    Python's own rule for numbers. Works on any ``ArgumentParser``, ``HfArgumentParser`` included::

        parser = accept_negative_values(HfArgumentParser(FreezingTrainingArguments))

    Returns ``parser``. A parser that defines options which themselves look like negative numbers
    (``-1``) keeps argparse's behaviour for them.
    """
    stock = parser._negative_number_matcher.pattern  # noqa: SLF001 - argparse has no public hook for this
    if NEGATIVE_VALUE not in stock:
        parser._negative_number_matcher = re.compile(f"(?:{stock})|(?:{NEGATIVE_VALUE})")  # noqa: SLF001
    return parser
