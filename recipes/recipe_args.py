"""The recipes' arguments and their parser: ``ModelArguments``, ``DataArguments`` and the library's
``FreezingArgumentParser`` over the three dataclasses (YAML ``--config``, flags override it).

>>> model_args, data_args, training_args = parse_recipe_args({"output_dir": "outputs/x"})  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hf_freeze import FreezingArgumentParser, FreezingTrainingArguments
from hf_freeze.training import compat


@dataclass
class ModelArguments:
    """Which model (and tokenizer) to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A local model folder or a Hub id, e.g. `--model_name_or_path bert-base-uncased` "
            "(default: the recipe's offline model)."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder or Hub id when it differs from the model, e.g. `--tokenizer_name gpt2`."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma list of key=value applied to the model config, e.g. "
            "`--config_overrides hidden_dropout_prob=0,attention_probs_dropout_prob=0`."
        },
    )


@dataclass
class OverwriteOutputDirArguments:
    """``--overwrite_output_dir`` for the output-dir guard, where ``TrainingArguments`` does not declare it."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow writing into an --output_dir that already holds a previous run, e.g. "
            "`--overwrite_output_dir`."
        },
    )


# transformers 4.57's TrainingArguments still declares overwrite_output_dir, 5.x does not: declared once either way.
@dataclass
class DataArguments(*compat.missing_training_fields(OverwriteOutputDirArguments)):
    """What to train on, how to read it, and where the run may write."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset, e.g. `--dataset_name stanfordnlp/sst2` (default: the recipe's offline dataset)."
        },
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
        metadata={
            "help": "Percent of the training data held out when there is no validation split, e.g. "
            "`--validation_split_percentage 5`."
        },
    )


RecipeArgs = tuple[ModelArguments, DataArguments, FreezingTrainingArguments]


# --------------------------------------------------------------------------- parsing
def make_parser() -> FreezingArgumentParser:
    """The recipes' parser: the three argument dataclasses on the library's parser (``--config FILE``
    or a YAML file as first argument, unknown keys with a suggestion, negative layer slices, repeated
    list flags)."""
    return FreezingArgumentParser((ModelArguments, DataArguments, FreezingTrainingArguments))


def parse_recipe_args(defaults: dict[str, Any] | None = None, args: list[str] | None = None) -> RecipeArgs:
    """Parse ``(ModelArguments, DataArguments, FreezingTrainingArguments)``.

    Precedence, lowest to highest: the dataclass defaults, the recipe's ``defaults``, the YAML file
    given as ``--config FILE`` (or as the first argument), the command-line flags.
    """
    values = dict(defaults or {})
    import torch

    if not torch.cuda.is_available():
        values.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator; it only warns on CPU
    model_args, data_args, training_args = make_parser().parse_args_and_config(args, defaults=values)
    return model_args, data_args, training_args
