"""FreezingTrainingArguments: flags, YAML, --help, validation, and the parent's serialisation."""

from __future__ import annotations

import json

import pytest
from transformers import HfArgumentParser, TrainingArguments

from hf_freeze import FreezeSpec, FreezingTrainingArguments, InvalidOptionError
from hf_freeze.training.arguments import UNFREEZE_STRATEGIES

FREEZE_FIELDS = [
    "freeze",
    "unfreeze",
    "freeze_embeddings",
    "freeze_layers",
    "layer_stack",
    "train_head",
    "freeze_norm_stats",
    "freeze_strict",
    "layer_lr_decay",
    "unfreeze_strategy",
    "unfreeze_steps",
    "unfreeze_layers_per_event",
]


def parse(argv):
    (args,) = HfArgumentParser(FreezingTrainingArguments).parse_args_into_dataclasses(args=argv)
    return args


def test_flags_build_the_spec(tmp_path):
    args = parse(
        [
            "--output_dir",
            str(tmp_path),
            "--freeze",
            "embeddings",
            "layer.1",
            "--unfreeze",
            "layer.1.output",
            "--freeze_layers",
            ":2",
            "--layer_stack",
            "encoder.layer",
            "--train_head",
            "false",
            "--freeze_norm_stats",
            "false",
            "--freeze_strict",
            "false",
            "--layer_lr_decay",
            "0.8",
        ]
    )
    assert args.freeze_spec == FreezeSpec(
        freeze=["embeddings", "layer.1"],
        unfreeze=["layer.1.output"],
        freeze_layers=":2",
        layer_stack="encoder.layer",
        train_head=False,
        freeze_norm_stats=False,
        freeze_strict=False,
    )
    assert args.layer_lr_decay == 0.8 and args.freezing_enabled


def test_a_repeated_list_flag_keeps_every_value(tmp_path):
    # argparse's nargs="+" kept only the last occurrence: `--freeze embeddings --freeze layer.1` froze layer 1 only
    args = parse(
        [
            "--output_dir",
            str(tmp_path),
            "--freeze",
            "embeddings",
            "--freeze",
            r"layer\.1",
            "pooler",
            "--unfreeze",
            "a",
            "--unfreeze",
            "b",
        ]
    )
    assert args.freeze == ["embeddings", r"layer\.1", "pooler"] and args.unfreeze == ["a", "b"]
    assert args.freeze_spec.freeze == args.freeze


def test_a_list_flag_replaces_a_config_default(tmp_path):
    # the first occurrence replaces a default set from a config file; it is not added to it
    parser = HfArgumentParser(FreezingTrainingArguments)
    parser.set_defaults(freeze=["from_yaml"])
    (args,) = parser.parse_args_into_dataclasses(args=["--output_dir", str(tmp_path), "--freeze", "a", "--freeze", "b"])
    assert args.freeze == ["a", "b"]
    (args,) = parser.parse_args_into_dataclasses(args=["--output_dir", str(tmp_path)])
    assert args.freeze == ["from_yaml"]


def test_defaults_freeze_nothing(tmp_path):
    args = parse(["--output_dir", str(tmp_path)])
    assert args.freeze_spec == FreezeSpec() and not args.freezing_enabled
    assert args.freeze == [] and args.freeze_layers is None and args.train_head and args.freeze_norm_stats


def test_yaml_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {tmp_path}\nfreeze_embeddings: true\nfreeze_layers: '-2:'\nfreeze: [pooler]\n"
        "learning_rate: 0.001\nunfreeze_layers_per_event: 2\n"
    )
    (args,) = HfArgumentParser(FreezingTrainingArguments).parse_yaml_file(str(config))
    assert args.freeze_spec.freeze_embeddings and args.freeze_spec.freeze_layers == "-2:"
    assert args.freeze == ["pooler"] and args.learning_rate == 0.001 and args.unfreeze_layers_per_event == 2


def test_yaml_unknown_key_is_an_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path}\nfreeze_layer: 3\n")
    with pytest.raises(ValueError, match="freeze_layer"):
        HfArgumentParser(FreezingTrainingArguments).parse_yaml_file(str(config))


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        HfArgumentParser(FreezingTrainingArguments).parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in FREEZE_FIELDS:
        assert f"--{name}" in text
    assert "{no,steps,epoch}" in text


def test_every_field_has_help_with_an_example():
    from dataclasses import fields

    own = {f.name: f for f in fields(FreezingTrainingArguments) if f.name in FREEZE_FIELDS}
    assert set(own) == set(FREEZE_FIELDS)
    for f in own.values():
        assert "e.g." in f.metadata["help"], f.name


def test_parent_serialisation_still_works(tmp_path):
    args = FreezingTrainingArguments(str(tmp_path), freeze=["embeddings"], freeze_layers=2)
    data = json.loads(args.to_json_string())
    assert data["freeze"] == ["embeddings"] and data["freeze_layers"] == 2
    assert "freeze_spec" not in data
    assert isinstance(args.to_sanitized_dict()["freeze"], str)
    assert args.freeze_spec.freeze_layers == 2


def test_single_pattern_string_becomes_a_list(tmp_path):
    args = FreezingTrainingArguments(str(tmp_path), freeze="embeddings", freeze_layers="none")
    assert args.freeze == ["embeddings"] and args.freeze_layers is None


@pytest.mark.parametrize(
    "options, option",
    [
        ({"freeze": ["layer.("]}, "freeze"),
        ({"freeze_layers": "1:x"}, "freeze_layers"),
        ({"layer_lr_decay": 0.0}, "layer_lr_decay"),
        ({"layer_lr_decay": 1.5}, "layer_lr_decay"),
        ({"unfreeze_strategy": "sometimes", "freeze_layers": 2}, "unfreeze_strategy"),
        ({"unfreeze_strategy": "epoch"}, "unfreeze_strategy"),
        ({"unfreeze_steps": 0, "freeze_layers": 2}, "unfreeze_steps"),
        ({"unfreeze_steps": 2.5, "freeze_layers": 2}, "unfreeze_steps"),
        ({"unfreeze_layers_per_event": 0}, "unfreeze_layers_per_event"),
    ],
)
def test_bad_values_name_the_option(tmp_path, options, option):
    with pytest.raises(ValueError, match=option):
        FreezingTrainingArguments(str(tmp_path), **options)


def test_errors_are_library_errors(tmp_path):
    with pytest.raises(InvalidOptionError):
        FreezingTrainingArguments(str(tmp_path), layer_lr_decay=-1)


def test_is_a_training_arguments(tmp_path):
    args = FreezingTrainingArguments(str(tmp_path))
    assert isinstance(args, TrainingArguments)
    assert set(UNFREEZE_STRATEGIES) == {"no", "steps", "epoch"}
