"""hf_freeze.training.compat: the one place that knows how transformers 4.57 and 5.x differ.

The private ``Trainer`` methods it overrides are checked here, so a transformers release that drops or
reshapes one fails this file by name instead of silently skipping a freezing step.
"""

from __future__ import annotations

import dataclasses
import os
import re
from importlib.metadata import version

import pytest
import torch
from packaging.specifiers import SpecifierSet
from tiny_models import build
from transformers import Trainer, TrainingArguments

from hf_freeze import FreezingTrainer
from hf_freeze.training import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def declared_transformers_range() -> SpecifierSet:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    (spec,) = [d for d in dependencies if re.match(r"transformers\b", d)]
    return SpecifierSet(spec[len("transformers") :])


def test_private_trainer_methods_still_exist_with_their_parameters():
    problems = compat.private_trainer_method_problems()
    assert not problems, (
        "hf_freeze.training.compat.CompatTrainer overrides private Trainer methods that changed in transformers "
        f"{version('transformers')}: {problems}. Update compat.py (and PRIVATE_TRAINER_METHODS)."
    )


def test_a_vanished_or_reshaped_private_method_is_reported():
    class Renamed(Trainer):
        _save_checkpoint = None

        def _wrap_model(self, module, training=True, dataloader=None):  # `model` renamed
            return module

    problems = compat.private_trainer_method_problems(Renamed)
    assert any("_save_checkpoint no longer exists" in p for p in problems)
    assert any("_wrap_model" in p and "no longer takes" in p for p in problems)


def test_freezing_trainer_overrides_only_the_private_methods_compat_owns():
    own = {name for name in vars(FreezingTrainer) if name.startswith("_") and not name.startswith("__")}
    trainer_private = {name for name in own if callable(getattr(Trainer, name, None))}
    assert trainer_private == set(), (
        f"FreezingTrainer overrides private Trainer methods {trainer_private}; "
        "route them through hf_freeze.training.compat.CompatTrainer"
    )


def test_installed_transformers_is_in_the_declared_range():
    supported = declared_transformers_range()
    assert version("transformers") in supported
    assert "4.57.0" in supported and "4.56.2" not in supported and "6.0.0" not in supported


def test_checkpointing_arguments_read_on_this_version(tmp_path):
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert {compat.CHECKPOINTING_ARG, compat.CHECKPOINTING_KWARGS_ARG} <= fields
    on = TrainingArguments(
        str(tmp_path), **{compat.CHECKPOINTING_ARG: True, compat.CHECKPOINTING_KWARGS_ARG: {"use_reentrant": False}}
    )
    assert compat.checkpointing_requested(on) and compat.checkpointing_kwargs(on) == {"use_reentrant": False}
    off = TrainingArguments(str(tmp_path))
    assert not compat.checkpointing_requested(off) and compat.checkpointing_kwargs(off) == {}


def test_model_checkpointing_follows_the_model():
    model = build("bert")
    assert not compat.model_checkpointing(model)
    getattr(model, f"{compat.CHECKPOINTING_ARG}_enable")()  # the name this version does not deprecate
    assert compat.model_checkpointing(model)


def test_missing_training_fields_keeps_only_fields_training_arguments_lacks():
    @dataclasses.dataclass
    class Mine:
        my_own_flag: bool = False

    @dataclasses.dataclass
    class Clash:
        learning_rate: float = 1.0

    assert compat.missing_training_fields(Mine, Clash) == (Mine,)


@pytest.mark.parametrize("given", [None, "model"])
def test_create_optimizer_takes_an_optional_model_on_every_version(tmp_path, given):
    model = build("bert")
    trainer = compat.CompatTrainer(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"))
    optimizer = trainer.create_optimizer(model if given else None)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_create_optimizer_for_another_model_needs_a_trainer_that_takes_one(tmp_path):
    trainer = compat.CompatTrainer(
        model=build("bert"), args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none")
    )
    other = build("llama")
    if compat.CREATE_OPTIMIZER_TAKES_MODEL:  # transformers 5
        optimizer = trainer.create_optimizer(other)
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in other.parameters()}
    else:  # 4.57: a clear error, not a TypeError from deep inside Trainer
        with pytest.raises(TypeError, match=r"create_optimizer\(model=LlamaForCausalLM\).*trainer.model"):
            trainer.create_optimizer(other)


def test_plan_hook_none_keeps_trainers_ddp_choice(tmp_path):
    class Plain(compat.CompatTrainer):
        pass

    class Chooses(compat.CompatTrainer):
        def _plan_find_unused_parameters(self):
            return False

    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to="none")
    plain, chooses = Plain(model=build("bert"), args=args), Chooses(model=build("bert"), args=args)
    before = plain.accelerator.ddp_handler
    plain._wrap_model(plain.model)
    assert plain.accelerator.ddp_handler is before
    chooses._wrap_model(chooses.model, training=False)  # evaluation: nothing to choose
    assert chooses.accelerator.ddp_handler is None or chooses.accelerator.ddp_handler.find_unused_parameters
    chooses._wrap_model(chooses.model)
    assert chooses.accelerator.ddp_handler.find_unused_parameters is False


@pytest.mark.skipif(not compat.CHECKPOINT_WRAPS_PRE_HOOKS, reason="transformers 5 checkpoints inside forward")
def test_the_checkpoint_function_compat_wraps_is_where_it_expects():
    # 4.57 keeps the checkpoint function of each layer in the private `_gradient_checkpointing_func` attribute
    model = build("bert")
    model.gradient_checkpointing_enable()
    layer = model.bert.encoder.layer[2]
    assert callable(layer.__dict__.get("_gradient_checkpointing_func")), "4.57 moved its checkpoint function"
    seen = []
    hook = compat.checkpoint_inputs_hook(layer, lambda inputs: seen.append(len(inputs)) or inputs)
    model.bert.encoder.register_forward_pre_hook(hook)
    model.train()
    model(input_ids=torch.randint(0, 99, (2, 8))).logits.sum().backward()
    assert seen, "the prepared checkpoint function was not called"
