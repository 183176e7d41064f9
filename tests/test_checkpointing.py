"""FreezingTrainer with ``save_only_trainable``: partial checkpoint-N folders, resume, refusals, rebuild."""

from __future__ import annotations

import inspect
import json
import os
import shutil

import pytest
import torch
import transformers as tf
from test_trainer import UNFREEZE, args_for, snapshot
from tiny_models import TokenData, build

from hf_freeze import FreezingTrainer, FreezingTrainingArguments, InvalidOptionError, PlanMismatchError
from hf_freeze.cli.main import main as cli_main
from hf_freeze.core.partial_checkpoint import MANIFEST_FILE, STATE_FILE, is_partial_checkpoint, load_trainable_state
from hf_freeze.errors import PartialCheckpointError
from hf_freeze.training.checkpointing import OVERRIDDEN_TRAINER_METHODS

OPTIONS = dict(freeze_embeddings=True, freeze_layers=":2", save_only_trainable=True, layer_lr_decay=0.8)


def run_args(tmp_path, name="run", **options):
    return args_for(tmp_path, name=name, **{"max_steps": 6, "save_strategy": "steps", "save_steps": 3, **options})


def trained_run(tmp_path, name="run", eval_dataset=None, **options):
    model = build("bert")
    trainer = FreezingTrainer(
        model=model, args=run_args(tmp_path, name, **options), train_dataset=TokenData(), eval_dataset=eval_dataset
    )
    trainer.train()
    return model, trainer


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    """An uninterrupted 6-step run with partial checkpoints at steps 3 and 6."""
    tmp_path = tmp_path_factory.mktemp("partial")
    model, trainer = trained_run(tmp_path, **OPTIONS)
    return tmp_path, model, trainer


def test_the_private_trainer_methods_overridden_still_exist():
    # transformers renaming one of these would silently write full checkpoints again
    for name in OVERRIDDEN_TRAINER_METHODS:
        assert callable(getattr(tf.Trainer, name, None)), f"Trainer.{name} is gone: update checkpointing"
    assert "self.save_model(" in inspect.getsource(tf.Trainer._save_checkpoint)
    assert list(inspect.signature(tf.Trainer._load_from_checkpoint).parameters)[:3] == [
        "self",
        "resume_from_checkpoint",
        "model",
    ]


def test_option_needs_a_freezing_option(tmp_path):
    with pytest.raises(InvalidOptionError, match="save_only_trainable"):
        FreezingTrainingArguments(str(tmp_path), save_only_trainable=True, report_to="none", use_cpu=True)


@pytest.mark.slow
def test_checkpoint_holds_only_what_trained_and_resume_is_bitwise(partial_run, tmp_path):
    root, model, _ = partial_run
    checkpoint = root / "run" / "checkpoint-3"
    files = set(os.listdir(checkpoint))
    assert {
        STATE_FILE,
        MANIFEST_FILE,
        "freeze_plan.json",
        "optimizer.pt",
        "scheduler.pt",
        "trainer_state.json",
        "rng_state.pth",
        "config.json",
        "training_args.bin",
    } <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
    assert is_partial_checkpoint(checkpoint)

    resumed_model = build("bert")
    trainer = FreezingTrainer(model=resumed_model, args=run_args(root, "run", **OPTIONS), train_dataset=TokenData())
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 6
    full = dict(model.named_parameters())
    assert all(torch.equal(p, full[n]) for n, p in resumed_model.named_parameters())

    trainer.save_model(str(tmp_path / "final"))  # the final model is still whole
    assert "model.safetensors" in os.listdir(tmp_path / "final")


@pytest.mark.slow
def test_from_pretrained_on_a_partial_checkpoint_fails_loudly(partial_run):
    root, _, _ = partial_run
    with pytest.raises(OSError, match="model.safetensors"):
        tf.BertForSequenceClassification.from_pretrained(root / "run" / "checkpoint-3")


@pytest.mark.slow
@pytest.mark.parametrize("change", ["seed", "one_frozen_tensor"])
def test_other_base_weights_are_refused_before_any_step(partial_run, change):
    root, _, _ = partial_run
    if change == "seed":
        torch.manual_seed(1)
        model = tf.BertForSequenceClassification(build("bert").config)
    else:
        model = build("bert")
        with torch.no_grad():
            model.bert.encoder.layer[0].output.dense.weight[0, 0] += 1
    before = snapshot(model)
    trainer = FreezingTrainer(model=model, args=run_args(root, "other", **OPTIONS), train_dataset=TokenData())
    expected = "layer.0.output.dense.weight' has other values" if change != "seed" else "another base model or seed"
    with pytest.raises(PlanMismatchError, match=expected):
        trainer.train(resume_from_checkpoint=str(root / "run" / "checkpoint-3"))
    assert trainer.state.global_step == 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_checkpoint_is_a_clear_error(partial_run, tmp_path, damage):
    root, _, _ = partial_run
    copy = tmp_path / "checkpoint-3"
    shutil.copytree(root / "run" / "checkpoint-3", copy)
    state = copy / STATE_FILE
    if damage == "missing":
        state.unlink()
    else:
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    trainer = FreezingTrainer(model=build("bert"), args=run_args(tmp_path, "d", **OPTIONS), train_dataset=TokenData())
    with pytest.raises(PartialCheckpointError, match="is missing" if damage == "missing" else "truncated"):
        trainer.train(resume_from_checkpoint=str(copy))


@pytest.mark.slow
def test_resume_compares_the_option(partial_run):
    root, _, _ = partial_run
    options = {**OPTIONS, "save_only_trainable": False}
    trainer = FreezingTrainer(model=build("bert"), args=run_args(root, "x", **options), train_dataset=TokenData())
    with pytest.raises(PlanMismatchError, match="save_only_trainable: saved True, now False"):
        trainer.train(resume_from_checkpoint=str(root / "run" / "checkpoint-3"))


@pytest.mark.slow
def test_rebuild_command_reproduces_the_trained_model(partial_run, tmp_path, capsys):
    root, model, _ = partial_run
    base = tmp_path / "base"
    build("bert").save_pretrained(base)
    out = tmp_path / "rebuilt"
    assert cli_main(["rebuild", str(base), str(root / "run" / "checkpoint-6"), "--output", str(out)]) == 0
    rebuilt = tf.BertForSequenceClassification.from_pretrained(out)
    ids = TokenData().x[:4]
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(input_ids=ids).logits, model(input_ids=ids).logits)

    other = tmp_path / "other"
    torch.manual_seed(5)
    tf.BertForSequenceClassification(build("bert").config).save_pretrained(other)
    assert cli_main(["rebuild", str(other), str(root / "run" / "checkpoint-6"), "--output", str(tmp_path / "o")]) == 2
    assert "another base model or seed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert cli_main(["rebuild", str(base), str(tmp_path), "--output", str(tmp_path / "p")]) == 2
    assert "is missing" in capsys.readouterr().err


@pytest.mark.slow
def test_gradual_unfreezing_across_a_partial_resume(tmp_path):
    options = {**UNFREEZE, "save_only_trainable": True}
    model = build("bert")
    FreezingTrainer(model=model, args=args_for(tmp_path, name="full", **options), train_dataset=TokenData()).train()
    stages = {}
    for step in (3, 6):
        manifest = json.loads((tmp_path / "full" / f"checkpoint-{step}" / MANIFEST_FILE).read_text())
        stages[step] = (manifest["stage"], manifest["parameters"])
    assert stages[3][0] == 1 and stages[6][0] == 3
    assert set(stages[3][1]) < set(stages[6][1])  # each checkpoint holds what trains at its stage
    assert any("layer.2." in n for n in stages[6][1]) and not any("layer.2." in n for n in stages[3][1])

    resumed_model = build("bert")
    resumed = FreezingTrainer(
        model=resumed_model, args=args_for(tmp_path, name="full", **options), train_dataset=TokenData()
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert resumed.freeze_plan.stage == 3
    full = dict(model.named_parameters())
    assert all(torch.equal(p, full[n]) for n, p in resumed_model.named_parameters())


def test_load_best_model_with_gradual_unfreezing_is_refused(tmp_path):
    options = {
        **UNFREEZE,
        "save_only_trainable": True,
        "load_best_model_at_end": True,
        "eval_strategy": "steps",
        "eval_steps": 3,
    }
    trainer = FreezingTrainer(
        model=build("bert"), args=args_for(tmp_path, **options), train_dataset=TokenData(), eval_dataset=TokenData(4)
    )
    with pytest.raises(InvalidOptionError, match="load_best_model_at_end"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.slow
def test_load_best_model_at_end_reads_a_partial_checkpoint(tmp_path):
    options = {
        **OPTIONS,
        "load_best_model_at_end": True,
        "eval_strategy": "steps",
        "eval_steps": 3,
        "metric_for_best_model": "loss",
        "greater_is_better": True,
    }  # the worse checkpoint wins
    model, trainer = trained_run(tmp_path, eval_dataset=TokenData(4), **options)
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith("checkpoint-3") and is_partial_checkpoint(best)
    reference = build("bert")
    load_trainable_state(reference, best)  # the base weights plus the best checkpoint's tensors
    assert all(torch.equal(p, dict(reference.named_parameters())[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("backend", ["deepspeed", "fsdp"])
def test_sharding_backends_are_refused(tmp_path, backend, monkeypatch):
    # Trainer cannot run DeepSpeed's or FSDP's checkpoint path here without launching; the refusal is a
    # check on the trainer's flags, made before any step.
    trainer = FreezingTrainer(model=build("bert"), args=args_for(tmp_path, **OPTIONS), train_dataset=TokenData())
    monkeypatch.setattr(trainer, f"is_{backend}_enabled", True, raising=False)
    with pytest.raises(InvalidOptionError, match="DeepSpeed" if backend == "deepspeed" else "FSDP"):
        trainer.check_partial_checkpointing()


@pytest.mark.slow
def test_peft_checkpoints_stay_peft_adapters(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(3)
    model = peft.get_peft_model(build("bert"), peft.LoraConfig(r=2, target_modules=["query", "value"]))
    trainer = FreezingTrainer(
        model=model, args=run_args(tmp_path, freeze=["layer.0"], save_only_trainable=True), train_dataset=TokenData()
    )
    trainer.train()
    files = set(os.listdir(tmp_path / "run" / "checkpoint-3"))
    assert "adapter_model.safetensors" in files and STATE_FILE not in files and MANIFEST_FILE not in files
