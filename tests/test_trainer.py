"""FreezingTrainer on one CPU process: drop-in equality with Trainer, freezing, optimizer groups,
checkpointing, resume, BatchNorm, PEFT, model_init, saved plans, model card and backend checks."""

from __future__ import annotations

import gc
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
from tiny_models import TokenData, build
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_freeze import (
    PLAN_FILE,
    FreezePlan,
    FreezeSpec,
    FreezingTrainer,
    FreezingTrainingArguments,
    InvalidOptionError,
    PlanMismatchError,
)
from hf_freeze.training import backend, compat
from hf_freeze.training import param_groups as optim
from hf_freeze.training.unfreezing import unfreeze_events

# Trainer.train() calls gc.collect() (accelerate's free_memory); after the heavy imports that scan costs
# about a second per run on this machine. Freezing the objects alive now keeps it short.
gc.freeze()

STEPS = 4
COMMON = dict(
    per_device_train_batch_size=4,
    learning_rate=1e-2,
    weight_decay=0.1,
    report_to="none",
    use_cpu=True,
    logging_steps=1,
    disable_tqdm=True,
    save_strategy="no",
    dataloader_num_workers=0,
)


class ImageData(torch.utils.data.Dataset):
    def __init__(self, n: int = 8):
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(n, 3, 16, 16, generator=g) * 3 + 1
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def args_for(tmp_path, cls=FreezingTrainingArguments, name="run", **options):
    merged = {**COMMON, "max_steps": STEPS, **options}
    return cls(str(tmp_path / name), **merged)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}


def optimizer_params(trainer):
    return [p for g in trainer.optimizer.param_groups for p in g["params"]]


# ---------------------------------------------------------------- drop-in


def _drop_in_run(tmp_path, trainer_cls, args_cls, label):
    model = build("bert")
    args = args_for(tmp_path, args_cls, name=label, save_strategy="steps", save_steps=2)
    trainer = trainer_cls(model=model, args=args, train_dataset=TokenData())
    trainer.train()
    return {
        "losses": losses(trainer),
        "params": snapshot(model),
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups],
        "sizes": [len(g["params"]) for g in trainer.optimizer.param_groups],
        "files": sorted(os.listdir(tmp_path / label / "checkpoint-2")),
        "trainer": trainer,
    }


@pytest.fixture(scope="module")
def trainer_reference(tmp_path_factory):
    return _drop_in_run(tmp_path_factory.mktemp("ref"), Trainer, TrainingArguments, "ref")


@pytest.mark.slow
@pytest.mark.parametrize("args_cls", [FreezingTrainingArguments, TrainingArguments])
def test_no_options_is_exactly_trainer(tmp_path, args_cls, trainer_reference):
    ref, ours = trainer_reference, _drop_in_run(tmp_path, FreezingTrainer, args_cls, "ours")
    assert ours["losses"] == ref["losses"] and len(ref["losses"]) == STEPS
    assert all(torch.equal(ref["params"][n], ours["params"][n]) for n in ref["params"])
    assert ours["groups"] == ref["groups"] and ours["sizes"] == ref["sizes"]
    assert ours["files"] == ref["files"] and PLAN_FILE not in ours["files"]
    assert ours["trainer"].freeze_plan is None


# ---------------------------------------------------------------- freezing


def test_frozen_stay_bitwise_trained_change_and_optimizer_holds_only_trainable(tmp_path):
    model = build("bert")
    before = snapshot(model)
    args = args_for(tmp_path, freeze_embeddings=True, freeze_layers=":2")
    trainer = FreezingTrainer(model=model, args=args, train_dataset=TokenData())
    trainer.train()
    plan = trainer.freeze_plan
    frozen, trainable = set(plan.frozen_names), set(plan.trainable_names)
    assert "bert.embeddings.word_embeddings.weight" in frozen and "bert.encoder.layer.1.output.dense.weight" in frozen
    assert "bert.encoder.layer.2.output.dense.weight" in trainable
    moved = changed(before, model)
    assert not (moved & frozen)
    assert {"bert.encoder.layer.2.output.dense.weight", "classifier.weight"} <= moved
    in_optimizer = {id(p) for p in optimizer_params(trainer)}
    named = dict(model.named_parameters())
    assert {id(named[n]) for n in frozen}.isdisjoint(in_optimizer)
    assert {id(named[n]) for n in trainable} == in_optimizer
    decay = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(named["bert.encoder.layer.3.output.dense.weight"]) in decay
    assert id(named["bert.encoder.layer.3.output.dense.bias"]) not in decay
    assert id(named["bert.encoder.layer.3.output.LayerNorm.weight"]) not in decay
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["decay", "no_decay"]


def test_same_losses_as_trainer_on_a_model_frozen_by_hand(tmp_path):
    model = build("bert")
    trainer = FreezingTrainer(
        model=model,
        args=args_for(tmp_path, name="ours", freeze=[r"layer\.[01]", "embeddings"]),
        train_dataset=TokenData(),
    )
    trainer.train()
    manual = build("bert")
    for name, param in manual.named_parameters():
        param.requires_grad_(name in set(trainer.freeze_plan.trainable_names))
    reference = Trainer(model=manual, args=args_for(tmp_path, TrainingArguments, name="ref"), train_dataset=TokenData())
    reference.train()
    assert losses(trainer) == losses(reference)
    theirs = dict(manual.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in model.named_parameters())
    # no option + a model frozen by hand: Trainer's behaviour, the plan only reports (and no file is added)
    by_hand = build("bert")
    for name, param in by_hand.named_parameters():
        param.requires_grad_(name in set(trainer.freeze_plan.trainable_names))
    plain = FreezingTrainer(
        model=by_hand,
        args=args_for(tmp_path, name="plain", save_strategy="steps", save_steps=STEPS),
        train_dataset=TokenData(),
    )
    plain.train()
    assert losses(plain) == losses(reference)
    assert set(plain.freeze_plan.frozen_names) == set(trainer.freeze_plan.frozen_names)
    assert PLAN_FILE not in os.listdir(tmp_path / "plain" / f"checkpoint-{STEPS}")


def test_layer_lr_decay_groups(tmp_path):
    model = build("bert")
    args = args_for(tmp_path, freeze_embeddings=True, layer_lr_decay=0.5, max_steps=1)
    trainer = FreezingTrainer(model=model, args=args, train_dataset=TokenData())
    trainer.create_optimizer()
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    base = args.learning_rate
    assert lrs["bert.encoder.layer.3/decay"] == pytest.approx(base * 0.5)
    assert lrs["bert.encoder.layer.0/no_decay"] == pytest.approx(base * 0.5**4)
    assert lrs["head/decay"] == pytest.approx(base)
    assert not any(name.startswith("embeddings") for name in lrs)  # frozen: no group
    held = {id(p) for p in optimizer_params(trainer)}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


def test_layer_lr_decay_scales_embeddings_and_schedules(tmp_path):
    model = build("bert")
    args = args_for(tmp_path, layer_lr_decay=0.5, max_steps=2, lr_scheduler_type="linear")
    trainer = FreezingTrainer(model=model, args=args, train_dataset=TokenData())
    trainer.train()
    scales = optim.layer_scales(trainer.freeze_plan, 0.5)
    assert scales["embeddings"] == pytest.approx(0.5**5)
    # the scheduler drives every group from its own initial lr
    for group in trainer.optimizer.param_groups:
        assert group["initial_lr"] == pytest.approx(args.learning_rate * scales[group["name"].split("/")[0]])
        assert group["lr"] == pytest.approx(0.0)


def test_layer_lr_decay_logs_the_base_rate_and_each_group_once(tmp_path):
    args = args_for(tmp_path, layer_lr_decay=0.5, max_steps=3, lr_scheduler_type="linear")
    trainer = FreezingTrainer(model=build("bert"), args=args, train_dataset=TokenData())
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    # the base rate (the head's group), not the embeddings' (first group, 0.5**5 of it)
    assert [h["learning_rate"] for h in logged] == pytest.approx([1e-2, 1e-2 * 2 / 3, 1e-2 / 3])
    first, later = logged[0], logged[1:]
    assert first["learning_rate/head"] == pytest.approx(1e-2)
    assert first["learning_rate/embeddings"] == pytest.approx(1e-2 * 0.5**5)
    assert first["learning_rate/bert.encoder.layer.0"] == pytest.approx(1e-2 * 0.5**4)
    assert not any(key.startswith("learning_rate/") for h in later for key in h)


def test_find_unused_parameters_choice_is_logged_only_when_distributed(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="hf_freeze"):
        FreezingTrainer(model=build("bert"), args=args_for(tmp_path, freeze_layers=1), train_dataset=TokenData())
    assert "trainable params" in caplog.text  # the plan is logged; the DDP choice is not (one process)
    assert "ddp_find_unused_parameters" not in caplog.text


def test_layer_lr_decay_refuses_a_non_standard_grouping():
    model = nn.Linear(2, 2)
    galore_like = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias], "rank": 4}])
    assert not optim.is_standard_grouping(galore_like, model, ["weight"])
    standard = torch.optim.AdamW([{"params": [model.weight], "weight_decay": 0.1}, {"params": [model.bias]}])
    assert optim.is_standard_grouping(standard, model, ["weight"])


class SGDFactory:
    """An optimizer factory (Trainer's path for Muon/Dion-style optimizers): called with the model."""

    def __call__(self, model, **kwargs):
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], **kwargs)


def test_special_optimizer_paths_keep_working(tmp_path):
    # optimizer_cls_and_kwargs with a plain class: Trainer's groups, split by layer_lr_decay
    model = build("bert")
    args = args_for(tmp_path, freeze_layers=":2", layer_lr_decay=0.5, max_steps=1)
    trainer = FreezingTrainer(
        model=model, args=args, train_dataset=TokenData(), optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1})
    )
    trainer.create_optimizer()
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}["bert.encoder.layer.2/decay"] == 0.1 * 0.25


@pytest.mark.skipif(not compat.OPTIMIZER_FACTORIES, reason="this transformers' Trainer takes no optimizer factories")
def test_optimizer_factory_keeps_working(tmp_path):
    # a factory builds its own groups: left alone, and layer_lr_decay says it cannot apply
    model = build("bert")
    before = snapshot(model)
    args = args_for(tmp_path, name="factory", freeze_layers=":2", max_steps=2)
    trainer = FreezingTrainer(
        model=model, args=args, train_dataset=TokenData(), optimizer_cls_and_kwargs=(SGDFactory, {"lr": 0.1})
    )
    trainer.train()
    assert len(trainer.optimizer.param_groups) == 1 and "name" not in trainer.optimizer.param_groups[0]
    moved = changed(before, model)
    assert "bert.encoder.layer.3.output.dense.weight" in moved and not moved & set(trainer.freeze_plan.frozen_names)
    args = args_for(tmp_path, name="factory2", freeze_layers=":2", layer_lr_decay=0.5, max_steps=1)
    trainer = FreezingTrainer(
        model=build("bert"), args=args, train_dataset=TokenData(), optimizer_cls_and_kwargs=(SGDFactory, {"lr": 0.1})
    )
    with pytest.raises(InvalidOptionError, match="layer_lr_decay"):
        trainer.create_optimizer()


def test_user_optimizer_with_frozen_parameters_warns(tmp_path, caplog):
    model = build("bert")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    args = args_for(tmp_path, freeze_embeddings=True)
    with caplog.at_level(logging.WARNING, logger="hf_freeze"):
        FreezingTrainer(model=model, args=args, train_dataset=TokenData(), optimizers=(optimizer, None))
    assert "optimizers=" in caplog.text and "word_embeddings" in caplog.text


def test_plan_logged_on_main_process(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="hf_freeze"):
        FreezingTrainer(model=build("bert"), args=args_for(tmp_path, freeze_layers="2"), train_dataset=TokenData())
    assert "trainable params:" in caplog.text and "bert.encoder.layer.1" in caplog.text


def test_model_init_gets_the_plan(tmp_path):
    made = []

    def model_init():
        made.append(build("bert"))
        return made[-1]

    args = args_for(tmp_path, freeze_layers=":3", max_steps=2)
    trainer = FreezingTrainer(model_init=model_init, args=args, train_dataset=TokenData())
    assert not made[0].bert.encoder.layer[2].output.dense.weight.requires_grad
    before = snapshot(build("bert"))
    trainer.train()
    assert len(made) == 2 and trainer.model is made[1]
    assert not made[1].bert.encoder.layer[0].output.dense.weight.requires_grad
    assert not (changed(before, made[1]) & set(trainer.freeze_plan.frozen_names))
    assert "bert.encoder.layer.3.output.dense.weight" in changed(before, made[1])


# ---------------------------------------------------------------- activation checkpointing


class EmbedsData(TokenData):
    """Feeds ``inputs_embeds`` (a frozen embedding computed outside the model), not ``input_ids``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.table = torch.randn(99, 16)

    def __getitem__(self, i):
        return {"inputs_embeds": self.table[self.x[i]], "labels": self.y[i]}


class Wrapper(nn.Module):
    """Not a PreTrainedModel: a backbone plus its own head, checkpointing forwarded to the backbone."""

    def __init__(self):
        super().__init__()
        self.inner = build("bert")

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **_):
        self.inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def forward(self, inputs_embeds, labels):
        return self.inner(inputs_embeds=inputs_embeds, labels=labels)


def checkpointing_options(on: bool, reentrant: bool) -> dict:
    """``activation_checkpointing(_kwargs)`` in transformers 5, ``gradient_checkpointing(_kwargs)`` in 4.57."""
    return {compat.CHECKPOINTING_ARG: on, compat.CHECKPOINTING_KWARGS_ARG: {"use_reentrant": reentrant}}


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("kind", ["input_ids", "inputs_embeds", "not_pretrained"])
def test_checkpointing_above_frozen_layers_trains(tmp_path, kind, reentrant):
    model = Wrapper() if kind == "not_pretrained" else build("bert")
    data = TokenData() if kind == "input_ids" else EmbedsData()
    options = dict(freeze_embeddings=True, freeze_layers=":2", max_steps=2, remove_unused_columns=False)
    if kind == "not_pretrained":
        options = dict(freeze=["embeddings", r"layer\.[01]"], max_steps=2, remove_unused_columns=False)
    args = args_for(tmp_path, **checkpointing_options(True, reentrant), **options)
    before = snapshot(model)
    trainer = FreezingTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    moved = changed(before, model)
    prefix = "inner." if kind == "not_pretrained" else ""
    assert f"{prefix}bert.encoder.layer.2.attention.self.query.weight" in moved
    assert f"{prefix}bert.encoder.layer.3.output.dense.weight" in moved
    assert not (moved & set(trainer.freeze_plan.frozen_names))


@pytest.mark.slow
def test_checkpointing_matches_the_run_without_it(tmp_path):
    finals = []
    for checkpointing in (False, True):
        model = build("bert")
        args = args_for(
            tmp_path,
            name=f"gc{checkpointing}",
            freeze_layers=":2",
            freeze_embeddings=True,
            max_steps=2,
            **checkpointing_options(checkpointing, reentrant=True),
            remove_unused_columns=False,
        )
        FreezingTrainer(model=model, args=args, train_dataset=EmbedsData()).train()
        finals.append(snapshot(model))
    for name, value in finals[0].items():
        torch.testing.assert_close(finals[1][name], value, msg=name)


# ---------------------------------------------------------------- save, resume, model card


@pytest.mark.slow
def test_plan_saved_in_checkpoints_final_model_and_model_card(tmp_path):
    args = args_for(tmp_path, freeze_layers=":2", save_strategy="steps", save_steps=2)
    trainer = FreezingTrainer(model=build("bert"), args=args, train_dataset=TokenData())
    trainer.train()
    trainer.save_model()
    trainer.create_model_card(model_name="tiny")
    out = tmp_path / "run"
    for directory in (out / "checkpoint-2", out / "checkpoint-4", out):
        saved = FreezePlan.load(directory)
        assert saved.plan_hash == trainer.freeze_plan.plan_hash
        assert json.loads((directory / PLAN_FILE).read_text())["spec"]["freeze_layers"] == ":2"
    card = (out / "README.md").read_text()
    assert "Partial fine-tuning (hf-freeze)" in card and trainer.freeze_plan.summary() in card


def _resume_args(tmp_path, name, **options):
    return args_for(tmp_path, name=name, max_steps=6, save_strategy="steps", save_steps=3, **options)


@pytest.mark.slow
def test_resume_matches_the_uninterrupted_run_bitwise(tmp_path):
    options = dict(freeze_embeddings=True, freeze_layers=":2", layer_lr_decay=0.8)
    full_model = build("bert")
    FreezingTrainer(model=full_model, args=_resume_args(tmp_path, "full", **options), train_dataset=TokenData()).train()

    resumed_model = build("bert")
    trainer = FreezingTrainer(
        model=resumed_model, args=_resume_args(tmp_path, "full", **options), train_dataset=TokenData()
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert trainer.state.global_step == 6
    full = dict(full_model.named_parameters())
    assert all(torch.equal(p, full[n]) for n, p in resumed_model.named_parameters())


@pytest.mark.slow
def test_resume_with_another_plan_errors_before_any_step(tmp_path, caplog):
    first = _resume_args(tmp_path, "a", freeze_layers=":2")
    first.max_steps = 3
    FreezingTrainer(model=build("bert"), args=first, train_dataset=TokenData()).train()
    checkpoint = str(tmp_path / "a" / "checkpoint-3")
    model = build("bert")
    before = snapshot(model)
    args = _resume_args(tmp_path, "b", freeze_layers=":3")
    trainer = FreezingTrainer(model=model, args=args, train_dataset=TokenData())
    with pytest.raises(PlanMismatchError, match=r"freeze_layers: saved ':2', now ':3'.*bert\.encoder\.layer\.2"):
        trainer.train(resume_from_checkpoint=checkpoint)
    assert trainer.state.global_step == 0 and not changed(before, model)


@pytest.mark.slow
def test_resume_with_another_layer_lr_decay_or_no_option_errors_before_any_step(tmp_path):
    # before: torch's "loaded state dict has a different number of parameter groups", after the plan check passed
    first = _resume_args(tmp_path, "a", freeze_layers=":2", layer_lr_decay=0.8)
    first.max_steps = 3
    FreezingTrainer(model=build("bert"), args=first, train_dataset=TokenData()).train()
    checkpoint = str(tmp_path / "a" / "checkpoint-3")
    for name, options, message in [
        ("b", dict(freeze_layers=":2"), r"layer_lr_decay: saved 0\.8, now 1\.0"),
        ("c", {}, r"trained with the freezing options \{'freeze_layers': ':2', 'layer_lr_decay': 0\.8\}"),
    ]:
        model = build("bert")
        before = snapshot(model)
        trainer = FreezingTrainer(model=model, args=_resume_args(tmp_path, name, **options), train_dataset=TokenData())
        with pytest.raises(PlanMismatchError, match=message):
            trainer.train(resume_from_checkpoint=checkpoint)
        assert trainer.state.global_step == 0 and not changed(before, model)


# (options the checkpoint was trained with, options of the resuming run, what the error names)
RESUME_MISMATCHES = [
    (dict(layer_lr_decay=0.8), dict(layer_lr_decay=0.9), r"layer_lr_decay: saved 0\.8, now 0\.9"),
    (dict(unfreeze_strategy="steps"), dict(unfreeze_strategy="epoch"), "unfreeze_strategy: saved 'steps', now 'epoch'"),
    (
        dict(unfreeze_strategy="steps", unfreeze_steps=2),
        dict(unfreeze_strategy="steps", unfreeze_steps=3),
        "unfreeze_steps: saved 2, now 3",
    ),
    (
        dict(unfreeze_strategy="steps"),
        dict(unfreeze_strategy="steps", unfreeze_layers_per_event=2),
        "unfreeze_layers_per_event: saved 1, now 2",
    ),
    (dict(layer_stack="encoder.layer"), {}, "layer_stack: saved 'encoder.layer', now None"),
    (dict(freeze_norm_stats=False), {}, "freeze_norm_stats: saved False, now True"),
]


def _checkpoint_with_plan(tmp_path, **options):
    """A checkpoint folder holding the freeze_plan.json a run with ``options`` writes (no training needed)."""
    trainer = FreezingTrainer(model=build("bert"), args=args_for(tmp_path, name="saved", **options))
    trainer.freeze_plan.save(tmp_path / "checkpoint-3")
    return str(tmp_path / "checkpoint-3")


@pytest.mark.parametrize(
    "saved,current,message", RESUME_MISMATCHES, ids=[m[2].split(":")[0] for m in RESUME_MISMATCHES]
)
def test_every_option_that_shapes_training_is_compared_on_resume(tmp_path, saved, current, message):
    # each pair resolves to the same trainable set, so before only the plan hash was compared and these passed
    base = dict(freeze_layers=":2", freeze_embeddings=True)
    checkpoint = _checkpoint_with_plan(tmp_path, **base, **saved)
    trainer = FreezingTrainer(model=build("bert"), args=args_for(tmp_path, name="now", **base, **current))
    with pytest.raises(PlanMismatchError, match=message):
        trainer._check_checkpoint_plan(checkpoint)
    again = FreezingTrainer(model=build("bert"), args=args_for(tmp_path, name="same", **base, **saved))
    again._check_checkpoint_plan(checkpoint)  # the same options resume


def test_resume_checks_between_plain_and_planned_runs(tmp_path, caplog):
    checkpoint = _checkpoint_with_plan(tmp_path, freeze_layers=":2")
    plain = FreezingTrainer(model=build("bert"), args=args_for(tmp_path, name="plain"))
    expected = r"trained with the freezing options \{'freeze_layers': ':2'\}.*sets none"
    with pytest.raises(PlanMismatchError, match=expected):
        plain._check_checkpoint_plan(checkpoint)  # before: a warning, then torch's parameter-group error
    (tmp_path / "plain-checkpoint").mkdir()
    plain._check_checkpoint_plan(str(tmp_path / "plain-checkpoint"))  # a plain run over a plain checkpoint: Trainer
    decayed = FreezingTrainer(model=build("bert"), args=args_for(tmp_path, name="decay", layer_lr_decay=0.9))
    with pytest.raises(PlanMismatchError, match=r"no freeze_plan.json.*'layer_lr_decay': 0\.9"):
        decayed._check_checkpoint_plan(str(tmp_path / "plain-checkpoint"))
    lenient = FreezingTrainer(
        model=build("bert"), args=args_for(tmp_path, name="lenient", freeze_layers=":2", freeze_strict=False)
    )
    lenient._check_checkpoint_plan(checkpoint)  # freeze_strict changes nothing that trains


def test_a_plan_file_without_trainer_options_still_resumes_with_a_warning(tmp_path, caplog):
    checkpoint = _checkpoint_with_plan(tmp_path, freeze_layers=":2")
    path = os.path.join(checkpoint, PLAN_FILE)
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    del data["trainer_options"]  # as written before the trainer options were recorded
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    assert FreezePlan.load(path).trainer_options is None
    trainer = FreezingTrainer(model=build("bert"), args=args_for(tmp_path, name="now", freeze_layers=":2"))
    with caplog.at_level(logging.WARNING, logger="hf_freeze"):
        trainer._check_checkpoint_plan(checkpoint)
    assert "cannot be checked" in caplog.text and "layer_lr_decay" in caplog.text
    other = FreezingTrainer(model=build("bert"), args=args_for(tmp_path, name="other", freeze_layers=":3"))
    with pytest.raises(PlanMismatchError, match="freeze_layers: saved ':2', now ':3'"):
        other._check_checkpoint_plan(checkpoint)


def test_resume_a_plain_checkpoint_with_freezing_errors(tmp_path):
    plain = args_for(tmp_path, TrainingArguments, name="plain", max_steps=3, save_strategy="steps", save_steps=3)
    Trainer(model=build("bert"), args=plain, train_dataset=TokenData()).train()
    args = _resume_args(tmp_path, "f", freeze_layers=1)
    trainer = FreezingTrainer(model=build("bert"), args=args, train_dataset=TokenData())
    with pytest.raises(PlanMismatchError, match="no freeze_plan.json"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-3"))


# ---------------------------------------------------------------- BatchNorm, PEFT


def test_resnet_frozen_backbone_keeps_running_stats(tmp_path):
    model = build("resnet")
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    before = snapshot(model)
    args = args_for(tmp_path, freeze=["resnet"], max_steps=3, per_device_train_batch_size=4)
    trainer = FreezingTrainer(model=model, args=args, train_dataset=ImageData())
    trainer.train()
    assert trainer.freeze_plan.frozen_norms
    for name, value in model.named_buffers():
        assert torch.equal(buffers[name], value), name
    assert changed(before, model) == {"classifier.1.weight", "classifier.1.bias"}


def test_resnet_running_stats_move_without_freeze_norm_stats(tmp_path):
    model = build("resnet")
    buffers = {n: b.detach().clone() for n, b in model.named_buffers() if "running_mean" in n}
    args = args_for(tmp_path, freeze=["resnet"], freeze_norm_stats=False, max_steps=1)
    FreezingTrainer(model=model, args=args, train_dataset=ImageData()).train()
    assert any(not torch.equal(buffers[n], b) for n, b in model.named_buffers() if n in buffers)


def test_peft_lora_rules_refine_the_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        build("bert"), peft.LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"])
    )
    before = snapshot(model)
    args = args_for(tmp_path, freeze=[r"layer\.0"], max_steps=2)
    trainer = FreezingTrainer(model=model, args=args, train_dataset=TokenData())
    trainer.train()
    plan = trainer.freeze_plan
    lora_0 = [n for n in plan.frozen_names if "layer.0" in n and "lora_" in n]
    lora_1 = [n for n in plan.trainable_names if "layer.1" in n and "lora_" in n]
    assert lora_0 and lora_1
    assert not any("lora_" not in n and "classifier" not in n for n in plan.trainable_names)
    moved = changed(before, model)
    assert not (moved & set(plan.frozen_names))
    assert any("layer.1" in n and "lora_B" in n for n in moved)
    trainer.save_model()
    assert FreezePlan.load(tmp_path / "run").plan_hash == plan.plan_hash


# ---------------------------------------------------------------- backend checks


def test_fsdp1_without_use_orig_params_refuses_mixed_units():
    model = build("bert")
    FreezeSpec(freeze_embeddings=True, freeze_layers=":2", freeze=[r"layer\.2\.output"]).resolve(model).apply(model)
    plugin = SimpleNamespace(fsdp_version=1, use_orig_params=False, transformer_cls_names_to_wrap=["BertLayer"])
    assert backend.mixed_fsdp_units(model, {"BertLayer"}) == ["<root>", "bert.encoder.layer.2"]
    with pytest.raises(InvalidOptionError, match="use_orig_params"):
        backend.check_fsdp(model, plugin)
    backend.check_fsdp(model, SimpleNamespace(fsdp_version=1, use_orig_params=True))
    backend.check_fsdp(model, SimpleNamespace(fsdp_version=2, use_orig_params=False))
    whole_layers = build("bert")
    FreezeSpec(freeze_layers=":2").resolve(whole_layers).apply(whole_layers)
    backend.check_fsdp(whole_layers, plugin)  # every unit is all frozen or all trainable


def test_find_unused_parameters_from_the_plan(tmp_path):
    model = build("bert")
    plan = FreezeSpec(freeze_layers=":2").resolve(model)
    assert backend.find_unused_from_plan(model, plan, checkpointing=False)  # the pooler is outside the stack
    plan = FreezeSpec(freeze_layers=":2", freeze=["pooler"]).resolve(model)
    assert not backend.find_unused_from_plan(model, plan, checkpointing=False)
    assert not backend.find_unused_from_plan(model, FreezeSpec(freeze=["pooler"]).resolve(model), checkpointing=True)
    mixtral = build("mixtral")
    assert backend.find_unused_from_plan(mixtral, FreezeSpec(freeze_layers=1).resolve(mixtral), False)
    # the choice reaches Accelerate's DDP kwargs when the model is wrapped for training (both versions);
    # tests/test_trainer_distributed.py checks the DDP module itself
    trainer = FreezingTrainer(
        model=build("bert"),
        args=args_for(tmp_path, freeze=["pooler"], freeze_layers=1, max_steps=1),
        train_dataset=TokenData(),
    )
    trainer.train()
    handler = trainer.accelerator.ddp_handler
    assert handler is not None and handler.find_unused_parameters is False
    args = args_for(tmp_path, freeze=["pooler"], ddp_find_unused_parameters=True, max_steps=1)
    user = FreezingTrainer(model=build("bert"), args=args, train_dataset=TokenData())
    user.train()
    assert user.accelerator.ddp_handler is None or user.accelerator.ddp_handler.find_unused_parameters is True


# ---------------------------------------------------------------- gradual unfreezing

UNFREEZE = dict(
    freeze_embeddings=True,
    freeze_layers="all",
    unfreeze_strategy="steps",
    unfreeze_steps=2,
    max_steps=6,
    save_strategy="steps",
    save_steps=3,
    lr_scheduler_type="linear",
    layer_lr_decay=0.9,
)


@pytest.mark.slow
def test_gradual_unfreezing_steps_and_bitwise_resume(tmp_path):
    model = build("bert")
    before = snapshot(model)
    trainer = FreezingTrainer(model=model, args=args_for(tmp_path, name="full", **UNFREEZE), train_dataset=TokenData())
    trainer.train()
    # events at steps 2, 4, 6 unfreeze layers 3, 2, 1 (top-down); layer 0 and the embeddings stay frozen
    assert trainer.freeze_plan.stage == 3
    moved = changed(before, model)
    assert any("layer.3." in n for n in moved) and any("layer.2." in n for n in moved)
    assert not any("layer.1." in n or "layer.0." in n or "embeddings" in n for n in moved)
    assert model.bert.encoder.layer[1].output.dense.weight.requires_grad
    assert not model.bert.encoder.layer[0].output.dense.weight.requires_grad
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["bert.encoder.layer.2/decay"]["weight_decay"] == 0.1
    assert groups["bert.encoder.layer.2/no_decay"]["weight_decay"] == 0.0
    assert groups["bert.encoder.layer.2/decay"]["initial_lr"] == pytest.approx(1e-2 * 0.9**2)
    assert all(g["lr"] == pytest.approx(0.0) for g in groups.values())  # the linear schedule drove every group
    assert FreezePlan.load(tmp_path / "full" / "checkpoint-3").stage == 1

    resumed_model = build("bert")
    resumed = FreezingTrainer(
        model=resumed_model, args=args_for(tmp_path, name="full", **UNFREEZE), train_dataset=TokenData()
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert resumed.freeze_plan.stage == 3
    full = dict(model.named_parameters())
    assert all(torch.equal(p, full[n]) for n, p in resumed_model.named_parameters())

    without = FreezingTrainer(
        model=build("bert"),
        args=args_for(tmp_path, name="no", **{**UNFREEZE, "unfreeze_strategy": "no"}),
        train_dataset=TokenData(),
    )
    with pytest.raises(PlanMismatchError, match="stage saved 1"):
        without.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))


def test_gradual_unfreezing_by_epoch(tmp_path):
    model = build("bert")
    before = snapshot(model)
    options = dict(freeze_layers=":4", unfreeze_strategy="epoch", unfreeze_steps=1, max_steps=-1, num_train_epochs=2)
    trainer = FreezingTrainer(model=model, args=args_for(tmp_path, **options), train_dataset=TokenData(n=8))
    trainer.train()
    assert trainer.freeze_plan.stage == 2  # after epoch 1 (layer 3) and epoch 2 (layer 2)
    moved = changed(before, model)
    assert any("layer.3." in n for n in moved) and not any("layer.2." in n for n in moved)


def test_unfreezing_events_order():
    model = build("t5")
    plan = FreezeSpec(freeze_layers=":2", freeze_embeddings=True, freeze=["final_layer_norm"], train_head=False)
    plan = plan.resolve(model)
    events = unfreeze_events(plan, layers_per_event=1)

    def blocks(event):
        return {n.split(".block.")[0] + ".block." + n.split(".block.")[1].split(".")[0] for n in event}

    # one block of one stack per layer, top-down by index, stacks in discovery order for equal indexes
    assert [blocks(e) for e in events[:4]] == [
        {"encoder.block.1"},
        {"decoder.block.1"},
        {"encoder.block.0"},
        {"decoder.block.0"},
    ]
    assert all("final_layer_norm" not in n for e in events for n in e)  # frozen by a pattern: stays frozen
    assert events[-1] == [n for n in plan.frozen_names if plan.decision(n).rule == "freeze_embeddings"]
    assert [blocks(e) for e in unfreeze_events(plan, layers_per_event=2)[:2]] == [
        {"encoder.block.1", "decoder.block.1"},
        {"encoder.block.0", "decoder.block.0"},
    ]


def test_unfreezing_refusals(tmp_path):
    model = build("bert")
    before = snapshot(model)
    args = args_for(tmp_path, freeze_layers=":3", unfreeze_strategy="steps", unfreeze_steps=2)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trainer = FreezingTrainer(model=model, args=args, train_dataset=TokenData(), optimizers=(optimizer, None))
    with pytest.raises(InvalidOptionError, match="unfreeze_strategy.*optimizers="):
        trainer.train()
    assert not changed(before, model)
    patterns_only = args_for(tmp_path, freeze=[r"layer\.[01]"], unfreeze_strategy="steps")
    with pytest.raises(InvalidOptionError, match="nothing to unfreeze"):
        FreezingTrainer(model=build("bert"), args=patterns_only, train_dataset=TokenData()).train()
    distributed = FreezingTrainer(model=build("bert"), args=args, train_dataset=TokenData())
    distributed.is_deepspeed_enabled = True  # what a DeepSpeed launch sets; the check runs before any step
    with pytest.raises(InvalidOptionError, match="not supported under DeepSpeed"):
        distributed._check_unfreezing()
