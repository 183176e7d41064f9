"""One argument parser for everything that reads the freezing options: the recipes, ``hf-freeze
inspect`` and a user's own script.

:class:`FreezingArgumentParser` is an ``HfArgumentParser`` (flags from dataclass fields, as
transformers and TRL scripts build them) that also

- reads ``--config FILE`` (YAML or JSON, or a ``.yaml`` file as the first argument): its keys give the
  defaults and command-line flags override them; a key that is no argument is an error that suggests
  the close name (``freeze_layer`` -> ``freeze_layers``);
- reads ``--freeze_layers -2:``: argparse takes a value that starts with ``-`` for an option, before
  any field's settings are consulted, so no dataclass field can fix it; :func:`accept_negative_values`
  teaches the parser negative layer slices;
- keeps every value of a repeated list flag (``--freeze a --freeze b``), through the
  :class:`~hf_freeze.options.ExtendAction` that list options name in their field metadata.

>>> parser = FreezingArgumentParser((ModelArguments, FreezingTrainingArguments))  # doctest: +SKIP
>>> model_args, training_args = parser.parse_args_and_config()                     # doctest: +SKIP

Importing this module imports transformers (for ``HfArgumentParser``), never torch.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

from transformers import HfArgumentParser

from .errors import InvalidOptionError
from .options import ExtendAction

__all__ = ["ExtendAction", "FreezingArgumentParser", "accept_negative_values", "load_config_file", "select_config_keys"]

# A layer selection that starts with a minus sign: "-2:", "-3:-1", "-1", "-2:,0". Never an option name.
NEGATIVE_VALUE = r"^-\d[-\d:,]*$"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def accept_negative_values(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let ``parser`` read ``--freeze_layers -2:`` (a negative layer slice as its own argument).

    argparse treats an argument that starts with ``-`` as an option unless it matches the parser's
    negative-number pattern; this widens that pattern to negative slices and comma lists, keeping
    Python's own rule for numbers. Works on any ``ArgumentParser`` (``FreezingArgumentParser`` calls
    it); returns ``parser``. A parser that defines options which themselves look like negative numbers
    (``-1``) keeps argparse's behaviour for them.
    """
    stock = parser._negative_number_matcher.pattern  # noqa: SLF001 - argparse has no public hook for this
    if NEGATIVE_VALUE not in stock:
        parser._negative_number_matcher = re.compile(f"(?:{stock})|(?:{NEGATIVE_VALUE})")  # noqa: SLF001
    return parser


def load_config_file(path: str | os.PathLike, option: str = "--config") -> dict[str, Any]:
    """The mapping in a YAML or JSON file (``.json``: JSON, anything else: YAML); errors name ``option``."""
    import yaml

    shown = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle) if shown.lower().endswith(".json") else yaml.safe_load(handle)
    except OSError as err:
        raise InvalidOptionError(
            f"`{option}`={shown!r} cannot be read: {err.strerror}. Pass the path of a YAML or JSON file, e.g. "
            "recipes/configs/text_classification.yaml."
        ) from None
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        kind = "JSON" if shown.lower().endswith(".json") else "YAML"
        raise InvalidOptionError(f"`{option}`={shown!r} is not valid {kind}: {' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidOptionError(
            f"`{option}`={shown!r} holds a {type(data).__name__}, not a mapping of argument names to values "
            "(e.g. `learning_rate: 5.0e-5`)."
        )
    return data


def select_config_keys(
    data: dict[str, Any],
    known: Iterable[str],
    source: str | None = None,
    *,
    ignore_unknown: bool = False,
    option: str = "--config",
) -> dict[str, Any]:
    """The entries of ``data`` whose key is in ``known``.

    Any other key is an error that suggests the closest known key; with ``ignore_unknown`` other keys
    are skipped (a recipe file read for its freezing keys only), except one so close to a known key
    that it must be a typo (``freeze_layer``).
    """
    known = set(known)
    unknown = [key for key in data if key not in known]
    if ignore_unknown:
        unknown = [key for key in unknown if difflib.get_close_matches(str(key), known, n=1, cutoff=0.8)]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.8 if ignore_unknown else 0.6)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        rule = (
            "other keys are ignored, but one this close to an option is taken for a typo"
            if ignore_unknown
            else "keys are the argument names, the same as the command-line flags without `--` (see `--help`)"
        )
        where = f"`{option}`={source!r}" if source is not None else f"`{option}`"
        raise InvalidOptionError(f"Unknown key(s) in {where}: {', '.join(hints)}; {rule}.")
    return {key: value for key, value in data.items() if key in known}


def split_config_argument(argv: list[str]) -> tuple[str | None, list[str]]:
    """``(config path, the other arguments)``: ``--config FILE``, ``--config=FILE`` or a first argument
    that ends in ``.yaml``/``.yml``. The last ``--config`` wins."""
    rest: list[str] = []
    config = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise InvalidOptionError("`--config` needs a value: the path of a YAML or JSON file.")
            config, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif i == 0 and arg.lower().endswith((".yaml", ".yml")) and not arg.startswith("-"):
            config = arg
        else:
            rest.append(arg)
        i += 1
    return config, rest


class FreezingArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` with ``--config FILE`` defaults, negative layer slices and repeated list flags.

    Precedence, lowest to highest: the dataclass defaults, the ``defaults`` given to
    :meth:`parse_args_and_config`, the config file, the command-line flags.

    ``ignore_unknown_config_keys=True`` reads a file written for a larger parser (``hf-freeze inspect``
    reads a recipe's YAML for its freezing keys): other keys are skipped, near-misses are still errors.
    """

    def __init__(
        self,
        dataclass_types: Any = None,
        *,
        ignore_unknown_config_keys: bool = False,
        config_help: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataclass_types, **kwargs)
        self.ignore_unknown_config_keys = ignore_unknown_config_keys
        # Declared so that --help lists it; parse_args_and_config takes it out of the arguments first.
        self.add_argument(
            "--config",
            metavar="FILE",
            default=argparse.SUPPRESS,
            help=config_help
            or "A YAML or JSON file whose keys are these flags' names; it gives the defaults and flags override it, "
            "e.g. `--config recipes/configs/text_classification.yaml` (a .yaml file may also be the first argument).",
        )
        accept_negative_values(self)
        for action in self._actions:  # HfArgumentParser's --no_<flag> repeats <flag>'s help; say what it does
            if isinstance(action, argparse._StoreFalseAction) and action.option_strings[0] == f"--no_{action.dest}":
                action.help = f"Set `{action.dest}` to false."
                action.default = argparse.SUPPRESS  # the flag's own action holds the default

    def config_keys(self) -> set[str]:
        """The keys a config file may set: every argument's destination."""
        return {a.dest for a in self._actions if a.dest not in (argparse.SUPPRESS, "help", "config")}

    def read_config(self, path: str | os.PathLike) -> dict[str, Any]:
        """The values of a config file that this parser knows (see ``ignore_unknown_config_keys``)."""
        return select_config_keys(
            load_config_file(path), self.config_keys(), str(path), ignore_unknown=self.ignore_unknown_config_keys
        )

    def set_config_defaults(self, values: dict[str, Any], option: str = "defaults") -> None:
        """Make ``values`` the defaults (flags still override them); an unknown key is an error."""
        self._apply_defaults(select_config_keys(values, self.config_keys(), option=option))

    def _apply_defaults(self, values: dict[str, Any]) -> None:
        for action in self._actions:
            if action.dest in values:
                action.required = False  # a required field that the file sets need not be typed
        self.set_defaults(**values)

    def parse_args_and_config(
        self,
        args: list[str] | None = None,
        defaults: dict[str, Any] | None = None,
        return_remaining_strings: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Parse ``args`` (default: ``sys.argv[1:]``) over ``defaults`` and the ``--config`` file.

        Returns the dataclass instances, in the order given to the constructor (then a namespace for
        arguments added with ``add_argument``, and with ``return_remaining_strings`` the leftovers).
        An argument no dataclass takes is a usage error (exit code 2), as in ``argparse``.
        """
        argv = list(sys.argv[1:] if args is None else args)
        config_path, argv = split_config_argument(argv)
        self.set_config_defaults(dict(defaults or {}))
        if config_path is not None:
            self._apply_defaults(self.read_config(config_path))
        *outputs, remaining = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True, **kwargs)
        if return_remaining_strings:
            return (*outputs, remaining)
        if remaining:
            self.error(f"unrecognized arguments: {' '.join(remaining)}")
        return tuple(outputs)
