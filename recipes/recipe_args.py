"""The recipes' arguments and their parser: ``ModelArguments``, ``DataArguments`` and the
YAML-and-flags parsing over ``HfArgumentParser``.

Kept in one module so that replacing the parser with the library's touches one file.

>>> model_args, data_args, training_args = parse_recipe_args({"output_dir": "outputs/x"})  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any

import yaml
from transformers import HfArgumentParser

from hf_freeze import FreezingTrainingArguments
from hf_freeze.errors import InvalidOptionError
from hf_freeze.parsing import accept_negative_values


@dataclass
class ModelArguments:
    """Which model (and tokenizer) to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A local model folder or a Hub id, e.g. `--model_name_or_path bert-base-uncased` "
                  "(default: the recipe's offline model)."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder or Hub id when it differs from the model, e.g. `--tokenizer_name gpt2`."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma list of key=value applied to the model config, e.g. "
                  "`--config_overrides hidden_dropout_prob=0,attention_probs_dropout_prob=0`."},
    )


@dataclass
class DataArguments:
    """What to train on, how to read it, and where the run may write."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset, e.g. `--dataset_name stanfordnlp/sst2` (default: the recipe's "
                  "offline dataset)."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The dataset's configuration, e.g. `--dataset_config_name sst2`."}
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "A local CSV, JSON or JSONL file (.txt too for causal_lm), e.g. `--train_file train.csv`."},
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "A local evaluation file of the same format, e.g. `--validation_file dev.csv`."}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Column holding the text, e.g. `--text_column sentence`."}
    )
    text_pair_column: str | None = field(
        default=None,
        metadata={"help": "Second text column for sentence-pair tasks, e.g. `--text_pair_column hypothesis`."},
    )
    label_column: str = field(
        default="label", metadata={"help": "Column holding the label, e.g. `--label_column stars`."}
    )
    image_column: str = field(
        default="image", metadata={"help": "Column holding the image, e.g. `--image_column img`."}
    )
    max_length: int = field(
        default=128, metadata={"help": "Longest tokenized input (longer is truncated), e.g. `--max_length 64`."}
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Use only the first N training examples (quick runs), e.g. `--max_train_samples 200`."},
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation examples, e.g. `--max_eval_samples 100`."}
    )
    validation_split_percentage: int = field(
        default=10,
        metadata={"help": "Percent of the training data held out when there is no validation split, e.g. "
                  "`--validation_split_percentage 5`."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing into an --output_dir that already holds a previous run, e.g. "
                  "`--overwrite_output_dir` (transformers 5 dropped this flag from TrainingArguments)."},
    )


RecipeArgs = tuple[ModelArguments, DataArguments, FreezingTrainingArguments]


# --------------------------------------------------------------------------- parsing
def make_parser() -> HfArgumentParser:
    """The recipes' parser: the three argument dataclasses, ``--config FILE``, negative layer slices.

    ``--config`` is declared so that ``--help`` lists it; :func:`parse_recipe_args` takes it (and a
    lone YAML path) out of the arguments before parsing, so it never reaches a dataclass.
    """
    parser = HfArgumentParser((ModelArguments, DataArguments, FreezingTrainingArguments))
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="A YAML file whose keys are these flags' names; it gives the defaults and flags override it, e.g. "
        "`--config recipes/configs/text_classification.yaml` (or the file as first argument).",
    )
    return accept_negative_values(parser)


def _known_keys() -> set[str]:
    return {f.name for cls in (ModelArguments, DataArguments, FreezingTrainingArguments) for f in fields(cls) if f.init}


def load_yaml_config(path: str) -> dict[str, Any]:
    """Read a recipe YAML file: a flat mapping of argument names to values; unknown keys are an error."""
    if not os.path.isfile(path):
        raise InvalidOptionError(f"`--config`={path!r}: no such file. Pass the path of a YAML file, e.g. "
                                 "recipes/configs/text_classification.yaml.")
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise InvalidOptionError(f"`--config`={path!r} holds a {type(data).__name__}, not a mapping of "
                                 "argument names to values (e.g. `learning_rate: 5.0e-5`).")
    known = _known_keys()
    unknown = sorted(set(data) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise InvalidOptionError(
            f"Unknown key(s) in `--config`={path!r}: {', '.join(hints)}. Keys are the recipe's argument "
            "names, the same as its command-line flags without `--` (see `--help`)."
        )
    return data


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    rest, config = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise InvalidOptionError("`--config` needs a value: the path of a YAML file.")
            config, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif i == 0 and arg.endswith((".yaml", ".yml")) and not arg.startswith("-"):
            config = arg
        else:
            rest.append(arg)
        i += 1
    return config, rest


def parse_recipe_args(defaults: dict[str, Any] | None = None, args: list[str] | None = None) -> RecipeArgs:
    """Parse ``(ModelArguments, DataArguments, FreezingTrainingArguments)``.

    Precedence, lowest to highest: the dataclass defaults, the recipe's ``defaults``, the YAML file
    given as ``--config FILE`` (or as the first argument), the command-line flags.
    """
    argv = list(sys.argv[1:] if args is None else args)
    config_path, argv = _split_config_flag(argv)
    values = dict(defaults or {})
    import torch

    if not torch.cuda.is_available():
        values.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator; it only warns on CPU
    if config_path:
        values.update(load_yaml_config(config_path))
    parser = make_parser()
    parser.set_defaults(**values)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args
