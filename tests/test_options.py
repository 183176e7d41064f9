"""Each freezing option is declared once (hf_freeze/options.py); everything that shows it derives from it."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import typing

import pytest
from transformers import HfArgumentParser

from hf_freeze import FreezeSpec, FreezingArgumentParser, FreezingTrainingArguments
from hf_freeze.cli.main import make_inspect_parser
from hf_freeze.options import (
    OPTIONS,
    PLAN_TRAINING_OPTIONS,
    SPEC,
    SPEC_OPTIONS,
    TRAINING,
    ExtendAction,
    Option,
    options_dataclass,
    options_table,
)
from hf_freeze.training.arguments import TRAINER_PLAN_OPTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = [o.name for o in OPTIONS]


def test_every_option_is_declared_once_with_help_and_an_example():
    assert len(NAMES) == len(set(NAMES)) == 16
    for option in OPTIONS:
        assert option.scope in (SPEC, TRAINING)
        assert option.help and not option.help.endswith("."), option.name
        assert option.example.split()[0] == f"--{option.name}", option.name
        assert f"e.g. `{option.example}`" in option.help_text
        # argparse %-formats help texts; a Markdown table cell ends at a bare |
        assert "%" not in option.help_text and "|" not in option.help_text, option.name


def test_freeze_spec_fields_are_the_spec_options():
    spec_fields = dataclasses.fields(FreezeSpec)
    assert [f.name for f in spec_fields] == [o.name for o in SPEC_OPTIONS]
    hints = typing.get_type_hints(FreezeSpec)  # not Field.type: HfArgumentParser rewrites that in place
    for f, option in zip(spec_fields, SPEC_OPTIONS):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert default == option.default and hints[f.name] == option.type and f.metadata["help"] == option.help_text


def test_training_arguments_fields_are_all_options():
    by_name = {f.name: f for f in dataclasses.fields(FreezingTrainingArguments)}
    assert list(by_name)[0] == "output_dir"  # the declared fields come after TrainingArguments' own
    assert [n for n in by_name if n in NAMES] == NAMES == list(by_name)[-len(NAMES) :]
    for option in OPTIONS:
        f = by_name[option.name]
        assert f.metadata["help"] == option.help_text
        assert (f.metadata.get("action") is ExtendAction) == isinstance(option.default, list)
        assert f.metadata.get("choices") == (list(option.choices) if option.choices else None)
    for option in OPTIONS:  # the docstring's Parameters section is generated too
        assert f"    {option.name} (`" in FreezingTrainingArguments.__doc__


def test_values_handed_to_the_spec_are_the_spec_options(tmp_path):
    values = {
        "freeze": "pooler",
        "unfreeze": ["a"],
        "freeze_embeddings": True,
        "freeze_layers": "none",
        "layer_stack": "encoder.layer",
        "train_head": False,
        "freeze_norm_stats": False,
        "freeze_strict": False,
    }
    assert set(values) == {o.name for o in SPEC_OPTIONS}
    args = FreezingTrainingArguments(str(tmp_path), **values)
    assert args.freeze_spec == FreezeSpec(**values)
    assert args.freeze == ["pooler"] and args.freeze_layers is None  # normalised values copied back


def test_plan_options_are_the_declared_training_options():
    assert (
        TRAINER_PLAN_OPTIONS
        == PLAN_TRAINING_OPTIONS
        == (
            "layer_lr_decay",
            "unfreeze_strategy",
            "unfreeze_steps",
            "unfreeze_layers_per_event",
            "save_only_trainable",
            "cache_frozen_features",
        )
    )


def test_inspect_flags_are_exactly_the_spec_options():
    parser = make_inspect_parser()
    own = {"model_name_or_path", "task", "num_labels", "json", "verbose", "plot"}
    assert parser.config_keys() - own == {o.name for o in SPEC_OPTIONS}
    helps = {a.dest: a.help for a in parser._actions if a.option_strings and a.option_strings[0] == f"--{a.dest}"}
    for option in SPEC_OPTIONS:
        assert helps[option.name] == option.help_text
        assert f"--{option.name.replace('_', '-')}" in parser._option_string_actions


def test_every_example_parses_and_sets_its_option(tmp_path):
    argv = [arg for option in OPTIONS for arg in shlex.split(option.example)]
    (args,) = FreezingArgumentParser(FreezingTrainingArguments).parse_args_and_config(
        ["--output_dir", str(tmp_path), *argv]
    )
    for option in OPTIONS:
        assert getattr(args, option.name) != option.default, option.name


def test_readme_holds_the_generated_table():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    block = re.search(r"<!-- options-table:[^\n]*-->\n(.*?)\n<!-- /options-table -->", readme, re.S)
    assert block, "README.md lost its options-table markers"
    assert block.group(1) == options_table(), "regenerate it: python -m hf_freeze.options"
    for name in NAMES:
        assert options_table().count(f"| `{name}` |") == 1


def test_a_new_option_is_one_declaration(tmp_path):
    """A new bool option is one declaration: it gets a field, a flag and a README row."""
    new = Option("example_new_option", bool, False, "an option added later", "--example_new_option", TRAINING)
    fields_cls = options_dataclass("Fields", (*OPTIONS, new))
    (parsed,) = HfArgumentParser(fields_cls).parse_args_into_dataclasses(args=["--example_new_option"])
    assert parsed.example_new_option is True and parsed.freeze == []
    assert "| `example_new_option` | `bool`, `False` | Trainer |" in options_table((*OPTIONS, new))


@pytest.mark.parametrize("argv", [["--help"]])
def test_help_renders_for_every_parser(capsys, argv):
    for parser in (
        FreezingArgumentParser(FreezingTrainingArguments),
        make_inspect_parser(),
        HfArgumentParser(FreezeSpec),
    ):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(argv)
        assert exited.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "e.g. `--freeze_layers :8`" in text
