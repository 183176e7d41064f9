"""freeze_norm_stats: frozen BatchNorm layers keep their running statistics across train() steps."""

import torch
from tiny_models import build

from hf_freeze import freeze_model


def bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running_" in n or "num_batches" in n}


def run_train_steps(model, steps=3):
    torch.manual_seed(1)
    for _ in range(steps):
        model.train()  # what Trainer does every step
        model(pixel_values=torch.randn(4, 3, 32, 32)).logits.sum().backward()


def test_frozen_backbone_keeps_running_stats_bitwise():
    model = build("resnet")
    plan = freeze_model(model, freeze_embeddings=True, freeze_layers="all")
    assert plan.frozen_norms, "the ResNet's BatchNorm layers should be recorded as frozen"
    before = bn_stats(model)
    run_train_steps(model)
    after = bn_stats(model)
    assert before.keys() == after.keys() and before
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert model.training  # the model itself still trains (dropout etc.)


def test_option_off_lets_stats_drift():
    model = build("resnet")
    freeze_model(model, freeze_embeddings=True, freeze_layers="all", freeze_norm_stats=False)
    before = bn_stats(model)
    run_train_steps(model)
    after = bn_stats(model)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_only_fully_frozen_norm_layers_are_fixed():
    model = build("resnet")
    plan = freeze_model(model, freeze_layers=":1")  # stage 0 frozen, stages 1-2 and stem train
    before = bn_stats(model)
    run_train_steps(model)
    after = bn_stats(model)
    stage0 = [n for n in before if n.startswith("resnet.encoder.stages.0.")]
    stage2 = [n for n in before if n.startswith("resnet.encoder.stages.2.") and "running_mean" in n]
    assert stage0 and all(torch.equal(before[n], after[n]) for n in stage0)
    assert stage2 and all(not torch.equal(before[n], after[n]) for n in stage2)
    assert all(m.startswith("resnet.encoder.stages.0.") for m in plan.frozen_norms)


def test_unfreezing_releases_the_statistics():
    model = build("resnet")
    plan = freeze_model(model, freeze_layers="all")
    stage2 = [n for n, _ in model.named_parameters() if n.startswith("resnet.encoder.stages.2.")]
    plan.with_trainable(stage2, rule="unfreeze_strategy").apply(model)
    before = bn_stats(model)
    run_train_steps(model)
    after = bn_stats(model)
    moved = [n for n in before if n.startswith("resnet.encoder.stages.2.") and "running_mean" in n]
    kept = [n for n in before if n.startswith("resnet.encoder.stages.0.")]
    assert all(not torch.equal(before[n], after[n]) for n in moved)
    assert all(torch.equal(before[n], after[n]) for n in kept)
