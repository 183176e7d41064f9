"""FreezingArgumentParser: the one parser behind the recipes, `hf-freeze inspect` and users' scripts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import yaml
from transformers import HfArgumentParser

from hf_freeze import FreezeSpec, FreezingArgumentParser, FreezingTrainingArguments, InvalidOptionError
from hf_freeze.parsing import accept_negative_values


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "The model, e.g. `--model_name_or_path m`."})


def parser() -> FreezingArgumentParser:
    return FreezingArgumentParser((ScriptArguments, FreezingTrainingArguments))


def write(tmp_path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("name", ["run.yaml", "run.json"])
def test_config_file_gives_defaults_and_flags_override(tmp_path, name):
    config = write(
        tmp_path,
        name,
        {
            "output_dir": str(tmp_path),
            "freeze_layers": ":2",
            "freeze": ["pooler"],
            "learning_rate": 3e-4,
            "model_name_or_path": "m",
            "train_head": False,
        },
    )
    script, args = parser().parse_args_and_config(
        ["--config", config, "--freeze_layers", "-1:"], defaults={"learning_rate": 1e-5, "freeze_embeddings": True}
    )
    assert args.freeze_layers == "-1:"  # the flag beats the file
    assert args.learning_rate == 3e-4  # the file beats the caller's defaults
    assert args.freeze_embeddings is True and args.freeze == ["pooler"] and args.train_head is False
    assert script.model_name_or_path == "m" and args.freeze_spec.freeze_layers == "-1:"


def test_a_yaml_file_as_first_argument_is_the_config(tmp_path):
    config = write(tmp_path, "run.yml", {"output_dir": str(tmp_path), "freeze_layers": 3})
    _, args = parser().parse_args_and_config([config, f"--config={config}"])
    assert args.freeze_layers == 3
    _, args = parser().parse_args_and_config([config])
    assert args.freeze_layers == 3


def test_unknown_config_key_is_an_error_with_the_close_name(tmp_path):
    config = write(tmp_path, "run.yaml", {"freeze_layer": ":2", "num_epochs": 3})
    with pytest.raises(
        InvalidOptionError,
        match=r"'freeze_layer' \(did you mean 'freeze_layers'\?\).*'num_epochs' "
        r"\(did you mean 'num_train_epochs'\?\)",
    ):
        parser().parse_args_and_config(["--config", config])
    with pytest.raises(InvalidOptionError, match=r"`defaults`.*'lr'"):
        parser().parse_args_and_config([], defaults={"lr": 1})


def test_ignoring_other_keys_still_catches_near_misses(tmp_path):
    lenient = FreezingArgumentParser(FreezeSpec, ignore_unknown_config_keys=True)
    config = write(tmp_path, "recipe.yaml", {"learning_rate": 1e-4, "output_dir": "x", "freeze_layers": ":2"})
    (spec,) = lenient.parse_args_and_config(["--config", config])
    assert spec == FreezeSpec(freeze_layers=":2")
    typo = write(tmp_path, "typo.yaml", {"freeze_layer": ":2"})
    with pytest.raises(InvalidOptionError, match="did you mean 'freeze_layers'"):
        FreezingArgumentParser(FreezeSpec, ignore_unknown_config_keys=True).parse_args_and_config(["--config", typo])


@pytest.mark.parametrize(
    "content, words",
    [(None, "cannot be read"), ("- a\n- b\n", "holds a list, not a mapping"), ("a: [1\n", "is not valid YAML")],
)
def test_bad_config_files(tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidOptionError, match=words):
        parser().parse_args_and_config(["--config", str(path)])
    with pytest.raises(InvalidOptionError, match="needs a value"):
        parser().parse_args_and_config(["--config"])


def test_repeated_list_flags_replace_the_config_list(tmp_path):
    config = write(tmp_path, "run.yaml", {"freeze": ["pooler"], "output_dir": str(tmp_path)})
    _, args = parser().parse_args_and_config(["--config", config, "--freeze", "a", "--freeze", "b", "c"])
    assert args.freeze == ["a", "b", "c"]


@pytest.mark.parametrize("value", ["-2:", "-3:-1", "-1:", "-2:,0"])
def test_negative_layer_slice_as_its_own_argument(tmp_path, value):
    _, args = parser().parse_args_and_config(["--output_dir", str(tmp_path), "--freeze_layers", value, "--seed", "-1"])
    assert args.freeze_layers == value and args.seed == -1
    # accept_negative_values alone teaches any HfArgumentParser the same
    plain = accept_negative_values(HfArgumentParser(FreezingTrainingArguments))
    (args,) = plain.parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--freeze_layers", value, "--seed", "-1"]
    )
    assert args.freeze_layers == value and args.seed == -1
    (args,) = HfArgumentParser(FreezingTrainingArguments).parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), f"--freeze_layers={value}"]
    )
    assert args.freeze_layers == value
    with pytest.raises(ValueError, match="not used"):  # a stray value is still an error
        plain.parse_args_into_dataclasses(args=["--output_dir", str(tmp_path), "-2:"])


def test_a_stray_argument_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args_and_config(["--output_dir", str(tmp_path), "-2:"])
    assert exited.value.code == 2 and "unrecognized arguments: -2:" in capsys.readouterr().err
    *_, rest = parser().parse_args_and_config(["--output_dir", str(tmp_path), "--nope"], return_remaining_strings=True)
    assert rest == ["--nope"]


def test_no_flag_sets_false_and_says_so(tmp_path, capsys):
    config = write(tmp_path, "run.yaml", {"train_head": False})
    _, args = parser().parse_args_and_config(["--output_dir", str(tmp_path), "--no_freeze_strict"])
    assert args.freeze_strict is False and args.train_head is True
    _, args = parser().parse_args_and_config(["--config", config, "--output_dir", str(tmp_path), "--train_head"])
    assert args.train_head is True
    with pytest.raises(SystemExit):
        parser().parse_args_and_config(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--no_train_head, --no-train-head Set `train_head` to false." in help_text
    assert "--config FILE" in help_text
