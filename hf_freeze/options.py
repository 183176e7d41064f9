"""Every freezing option, declared once.

An :class:`Option` holds what a user needs to know about one option: its name, type, default, a help
text and one example, and whether it decides what is frozen (``"spec"``: a field of ``FreezeSpec``,
also of ``FreezingTrainingArguments``) or only how the Trainer trains (``"training"``). Everything
that shows an option derives from :data:`OPTIONS`, nothing retypes it:

- the dataclass fields of ``FreezeSpec`` and ``FreezingTrainingArguments`` (:func:`options_dataclass`),
  whose metadata carries the help text, :class:`ExtendAction` for list options and the choices, so
  ``HfArgumentParser`` (the recipes, ``hf-freeze inspect``, a user's script) builds the flags from it;
- the values ``FreezingTrainingArguments`` hands to ``FreezeSpec`` (:data:`SPEC_OPTIONS`) and records
  in ``freeze_plan.json`` (:data:`PLAN_TRAINING_OPTIONS`);
- the options table of the README (:func:`options_table`; ``python -m hf_freeze.options`` prints it).

Adding an option is one :class:`Option` entry here, plus the code that acts on it.

Only the standard library is imported here: ``import hf_freeze`` and ``hf-freeze --help`` stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Literal

SPEC = "spec"
TRAINING = "training"
UNFREEZE_STRATEGIES = ("no", "steps", "epoch")


class ExtendAction(argparse.Action):
    """A repeatable list flag: ``--freeze a --freeze b c`` gives ``["a", "b", "c"]``.

    argparse's ``nargs="+"`` keeps only the last occurrence of a repeated flag. Here the first
    occurrence on the command line replaces the default (the dataclass default or a config-file value
    set with ``parser.set_defaults``), later ones add to it: flags still override a config file, and
    nothing typed is dropped. (argparse's own ``"extend"`` would add to the config file's list.) Every
    list option names it in its field metadata, so a plain ``HfArgumentParser`` uses it too.
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


@dataclasses.dataclass(frozen=True)
class Option:
    """One freezing option. ``help`` is a phrase that reads well followed by ``, e.g. <example>``."""

    name: str
    type: Any
    default: Any
    help: str
    example: str
    scope: Literal["spec", "training"]
    choices: tuple[str, ...] | None = None
    note: str = ""
    """Said after the example (a caveat the example does not show)."""
    in_plan: bool = False
    """For a ``"training"`` option: it changes the trainable set or the optimizer groups, so it is saved
    in ``freeze_plan.json`` and compared on resume (``"spec"`` options always are, with the spec)."""

    @property
    def help_text(self) -> str:
        """The help shown by ``--help``, the field metadata and the README: the help and its example."""
        text = f"{self.help[:1].upper()}{self.help[1:]}, e.g. `{self.example}`."
        return f"{text} {self.note}" if self.note else text

    def field(self) -> dataclasses.Field:
        """The dataclass field: default, and the metadata ``HfArgumentParser`` turns into a flag."""
        metadata: dict[str, Any] = {"help": self.help_text}
        if self.choices is not None:
            metadata["choices"] = list(self.choices)
        if isinstance(self.default, list):
            metadata["action"] = ExtendAction
            default = self.default
            return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
        return dataclasses.field(default=self.default, metadata=metadata)


OPTIONS: tuple[Option, ...] = (
    Option(
        "freeze",
        list[str],
        [],
        "regex patterns of parameters to freeze, matched on whole dot-separated segments of the names "
        "`model.named_parameters()` gives (`layer.1` matches `encoder.layer.1.output.dense.bias`, not "
        "`encoder.layer.10.output.dense.bias`); repeating the flag adds patterns",
        "--freeze embeddings 'encoder.layer.[0-3]'",
        SPEC,
    ),
    Option(
        "unfreeze",
        list[str],
        [],
        "regex patterns of parameters to keep or make trainable; they beat `freeze` and the shortcuts, and "
        "are the only rule that makes trainable a parameter that arrived frozen; repeating the flag adds patterns",
        "--unfreeze layer.3.output",
        SPEC,
    ),
    Option(
        "freeze_embeddings",
        bool,
        False,
        "freeze the input embedding block: the input embeddings and what sits around them (position and "
        "token-type embeddings, the embedding LayerNorm)",
        "--freeze_embeddings",
        SPEC,
    ),
    Option(
        "freeze_layers",
        int | str | None,
        None,
        "layers of the main layer stack(s) to freeze: a count from the bottom, a Python-style slice, a comma "
        "list of indexes and slices, or `all`; a bound outside the stack is an error, never clamped",
        "--freeze_layers :8",
        SPEC,
        note="A negative slice as its own argument (`--freeze_layers -2:`) needs `hf_freeze.FreezingArgumentParser` "
        "(the recipes and `hf-freeze inspect` use it); `--freeze_layers=-2:` works with any parser.",
    ),
    Option(
        "layer_stack",
        str | None,
        None,
        "pattern over module paths naming the layer stack(s) that `freeze_layers` addresses (default: every "
        "main stack found)",
        "--layer_stack decoder",
        SPEC,
    ),
    Option(
        "train_head",
        bool,
        True,
        "protect the task head from this plan's freezing rules (a head that arrived frozen stays frozen)",
        "--train_head false",
        SPEC,
    ),
    Option(
        "freeze_norm_stats",
        bool,
        True,
        "normalization layers (BatchNorm etc.) whose parameters are all frozen keep their running "
        "statistics fixed: they run in eval mode while the model trains",
        "--freeze_norm_stats false",
        SPEC,
    ),
    Option(
        "freeze_strict",
        bool,
        True,
        "a `freeze`/`unfreeze` pattern that matches no parameter is an error listing the closest names "
        "(false: a warning)",
        "--freeze_strict false",
        SPEC,
    ),
    Option(
        "layer_lr_decay",
        float,
        1.0,
        "layer-wise learning-rate decay in (0, 1]; layer `i` of `L` gets `lr * decay**(L - i)`, "
        "the embeddings `lr * decay**(L + 1)`, the head `lr` (1.0: off)",
        "--layer_lr_decay 0.9",
        TRAINING,
        in_plan=True,
    ),
    Option(
        "unfreeze_strategy",
        str,
        "no",
        "gradual unfreezing (ULMFiT), scheduled as `save_strategy` is: `no`, `steps` or "
        "`epoch`; layers frozen by `freeze_layers` come back top-down, then the embeddings",
        "--unfreeze_strategy epoch",
        TRAINING,
        choices=UNFREEZE_STRATEGIES,
        in_plan=True,
    ),
    Option(
        "unfreeze_steps",
        float,
        1,
        "every this many steps (or epochs) the next frozen layers are unfrozen; a float in "
        "(0, 1) is a fraction of the total steps",
        "--unfreeze_steps 100",
        TRAINING,
        in_plan=True,
    ),
    Option(
        "unfreeze_layers_per_event",
        int,
        1,
        "how many frozen layers each unfreezing event brings back",
        "--unfreeze_layers_per_event 2",
        TRAINING,
        in_plan=True,
    ),
    Option(
        "save_only_trainable",
        bool,
        False,
        "checkpoints (`checkpoint-N` folders) hold only the trainable tensors and a fingerprint of the frozen "
        "weights, checked on resume; the final model is still saved whole",
        "--save_only_trainable",
        TRAINING,
        in_plan=True,
    ),
    Option(
        "cache_frozen_features",
        bool,
        False,
        "compute the frozen prefix (the embeddings and the bottom frozen layers) once per distinct input, in "
        "eval mode, and train only the layers above it",
        "--cache_frozen_features",
        TRAINING,
        in_plan=True,  # the frozen prefix runs in eval mode: a resumed run must train the same way
    ),
    Option(
        "feature_cache_max_memory_mb",
        float,
        2048,
        "memory budget of the frozen-feature cache in MiB; past it, features spill to a memory-mapped file in "
        "`feature_cache_dir`",
        "--feature_cache_max_memory_mb 512",
        TRAINING,
    ),
    Option(
        "feature_cache_dir",
        str | None,
        None,
        "folder of the frozen-feature spill file (default: the system temporary folder)",
        "--feature_cache_dir /scratch/cache",
        TRAINING,
    ),
)

SPEC_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.scope == SPEC)
TRAINING_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.scope == TRAINING)
PLAN_TRAINING_OPTIONS: tuple[str, ...] = tuple(o.name for o in TRAINING_OPTIONS if o.in_plan)


def options_dataclass(name: str, options: Iterable[Option], module: str | None = None) -> type:
    """A dataclass with one field per option, in order: the base that ``FreezeSpec`` and
    ``FreezingTrainingArguments`` inherit their option fields from."""
    cls = dataclasses.make_dataclass(name, [(o.name, o.type, o.field()) for o in options])
    if module is not None:
        cls.__module__ = module
    return cls


def type_name(tp: Any) -> str:
    """``bool`` -> ``"bool"``, ``list[str]`` -> ``"list[str]"``, ``int | str | None`` as written."""
    return tp.__name__ if type(tp) is type else repr(tp).replace("typing.", "")


def _default_text(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def options_docstring(options: Iterable[Option]) -> str:
    """A ``Parameters:`` section in the transformers/TRL docstring style."""
    lines = ["Parameters:"]
    for scope, title in ((SPEC, "What is frozen"), (TRAINING, "How the trainable part trains")):
        group = [o for o in options if o.scope == scope]
        if group:
            lines += ["", f"    > {title}", ""]
        for o in group:
            lines += [
                f"    {o.name} (`{type_name(o.type)}`, defaults to `{_default_text(o.default)}`):",
                f"        {o.help_text}",
            ]
    return "\n".join(lines)


def options_table(options: Iterable[Option] = OPTIONS) -> str:
    """The README's options table (Markdown), generated from the declarations."""
    rows = ["| option | type, default | read by | meaning |", "|---|---|---|---|"]
    for o in options:
        where = "`FreezeSpec`, Trainer, `inspect`" if o.scope == SPEC else "Trainer"
        type_text = type_name(o.type).replace("|", "\\|")  # a bare | would end the table cell
        rows.append(f"| `{o.name}` | `{type_text}`, `{_default_text(o.default)}` | {where} | {o.help_text} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(options_table())
