"""Found by the long run (benchmarks/long_run.py, docs/reliability.md): a FreezingTrainer with gradual
unfreezing built on a model object that an earlier trainer left at a later unfreezing stage (the same
model reused, e.g. a notebook that trains again) derived fewer events and silently stopped unfreezing:
what the earlier plan froze arrived frozen, and a plan never unfreezes what arrives frozen (a PEFT base
weight). Fixed: ``resolve_and_apply`` first releases what the last applied plan froze by its own rules
(``core.api.release_applied_plan``); what was frozen before any plan (by hand, by PEFT) stays frozen.
"""

from __future__ import annotations

from tiny_models import TokenData, build

from hf_freeze import FreezingTrainer, FreezingTrainingArguments

OPTIONS = dict(freeze_embeddings=True, freeze_layers="all", unfreeze_strategy="steps", unfreeze_steps=2)


def events_of(model, tmp_path) -> int:
    args = FreezingTrainingArguments(
        str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True, max_steps=4, **OPTIONS
    )
    return len(FreezingTrainer(model=model, args=args, train_dataset=TokenData(8))._unfreezing.events)


def test_a_fresh_model_gets_every_event(tmp_path):
    assert events_of(build("bert"), tmp_path) == 5  # layers 3, 2, 1, 0, then the embeddings


def test_a_model_left_at_a_later_stage_by_a_trainer_gets_every_event(tmp_path):
    model = build("bert")
    args = FreezingTrainingArguments(
        str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True, max_steps=4, save_strategy="no", **OPTIONS
    )
    FreezingTrainer(model=model, args=args, train_dataset=TokenData(8)).train()  # events after steps 2 and 4
    left = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".layer.2." in n for n in left) and not any(".layer.1." in n for n in left)  # left at stage 2
    assert events_of(model, tmp_path) == 5


def test_what_arrived_frozen_before_hf_freeze_stays_out_of_the_events(tmp_path):
    """A layer the user (or PEFT) froze before any plan is not brought back by a later trainer either."""
    model = build("bert")
    for name, param in model.named_parameters():
        if ".layer.0." in name:
            param.requires_grad_(False)
    assert events_of(model, tmp_path) == 4  # layers 3, 2, 1, then the embeddings
    assert events_of(model, tmp_path) == 4  # the same on the model the first trainer froze
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".layer.0." in n)


def test_a_manually_frozen_model_is_still_treated_as_arrived_frozen(tmp_path):
    model = build("bert")
    for name, param in model.named_parameters():  # frozen by hand, not by a plan: the user's choice
        param.requires_grad_(not (name.startswith("bert.embeddings") or ".layer.0." in name or ".layer.1." in name))
    assert events_of(model, tmp_path) == 2  # only layers 3 and 2, which the plan itself froze


def test_release_undoes_the_last_plan_and_its_norm_statistics_hooks():
    import torch
    from torch import nn

    from hf_freeze import freeze_model
    from hf_freeze.core.api import release_applied_plan

    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[2].weight.requires_grad_(False)  # frozen before any plan: stays frozen
    plan = freeze_model(model, freeze=["0", "1"], freeze_norm_stats=True, train_head=False)
    assert plan.frozen_norms == ["1"] and model[1]._forward_pre_hooks
    released = release_applied_plan(model)
    assert sorted(released) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["2.weight"]
    assert not model[1]._forward_pre_hooks  # its running statistics update again in train mode
    model.train()
    before = model[1].running_mean.clone()
    model(torch.randn(4, 3))
    assert not torch.equal(model[1].running_mean, before)
    assert release_applied_plan(model) == []  # nothing applied since
