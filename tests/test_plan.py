"""FreezePlan: apply, totals, report, JSON round trip."""

import json

import pytest
import torch
from tiny_models import build

from hf_freeze import FreezePlan, FreezeSpec, freeze_model


def test_apply_sets_exactly_the_planned_flags_and_training_leaves_frozen_bitwise_equal():
    model = build("bert")
    plan = freeze_model(model, freeze_embeddings=True, freeze_layers=":2")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == plan.trainable_names
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        out = model(input_ids=torch.randint(0, 99, (4, 8)), labels=torch.tensor([0, 1, 0, 1]))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        if name in plan.frozen_names:
            assert torch.equal(param, before[name]), name
            assert param.grad is None
    assert not torch.equal(model.classifier.weight, before["classifier.weight"])
    assert not torch.equal(
        model.bert.encoder.layer[3].output.dense.weight, before["bert.encoder.layer.3.output.dense.weight"]
    )


def test_totals_summary_and_table():
    model = build("bert")
    plan = FreezeSpec(freeze_embeddings=True, freeze_layers=":2").resolve(model)
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for n, p in model.named_parameters() if n.startswith("bert.embeddings.")) + sum(
        p.numel() for i in (0, 1) for p in model.bert.encoder.layer[i].parameters()
    )
    assert plan.total_numel == total and plan.trainable_numel == total - frozen
    assert plan.summary() == (
        f"trainable params: {total - frozen:,} || all params: {total:,} || "
        f"trainable%: {100 * (total - frozen) / total:.4f}"
    )
    table = plan.table()
    assert [row["group"] for row in plan.groups()] == [
        "embeddings",
        *[f"bert.encoder.layer.{i}" for i in range(4)],
        "other",
        "head",
    ]
    assert "freeze_layers (16)" in table and "train_head (2)" in table


def test_table_prints_patterns_as_typed():
    table = FreezeSpec(freeze=[r"layer\.1"], unfreeze=[r"layer\.1\.output"]).resolve(build("bert")).table()
    assert "freeze 'layer\\.1': 16 parameter(s)" in table.splitlines()
    assert "unfreeze 'layer\\.1\\.output': 4 parameter(s)" in table.splitlines()
    assert "\\\\" not in table


def test_json_round_trip_and_save_load(tmp_path):
    model = build("gpt2")
    plan = FreezeSpec(freeze_layers=":2", freeze=["ln_f"]).resolve(model)
    again = FreezePlan.from_json(plan.to_json())
    assert again == plan and again.plan_hash == plan.plan_hash
    path = plan.save(tmp_path)
    with open(path) as handle:
        data = json.load(handle)
    assert data["totals"]["trainable"] == plan.trainable_numel
    assert data["spec"]["freeze_layers"] == ":2"
    assert FreezePlan.load(tmp_path) == plan
    # A loaded plan applies to a fresh copy of the model.
    fresh = build("gpt2")
    FreezePlan.load(path).apply(fresh)
    assert [n for n, p in fresh.named_parameters() if not p.requires_grad] == plan.frozen_names


def test_hash_changes_with_the_trainable_set():
    model = build("bert")
    a = FreezeSpec(freeze_layers=":1").resolve(model)
    b = FreezeSpec(freeze_layers=":2").resolve(model)
    c = FreezeSpec(freeze=["layer.0"]).resolve(model)  # same trainable set as `a`, other spelling
    assert a.plan_hash != b.plan_hash
    assert a.plan_hash == c.plan_hash


def test_meta_device_model_resolves_without_memory():
    import transformers as tf

    with torch.device("meta"):
        model = tf.LlamaForCausalLM(
            tf.LlamaConfig(
                num_hidden_layers=2,
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=2,
                num_key_value_heads=1,
                vocab_size=100,
            )
        )
    plan = FreezeSpec(freeze_layers=":1", freeze_embeddings=True).resolve(model)
    assert plan.total_numel == sum(p.numel() for p in model.parameters())
    assert all(d.layer == 0 for d in plan.params if d.rule == "freeze_layers")


def test_apply_to_the_resolved_model_with_a_replaced_tensor_checks_the_plan_again():
    """The fast path of apply (the very tensors the plan was resolved from) does not cover a model whose
    parameter was replaced since: apply compares names and shapes again and refuses a misfit."""
    import torch
    from torch import nn

    from hf_freeze import FreezeSpec
    from hf_freeze.errors import PlanMismatchError

    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    plan = FreezeSpec(freeze=["0"], train_head=False).resolve(model)
    plan.apply(model)
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]
    model[1].weight = nn.Parameter(torch.zeros(5, 3))
    with pytest.raises(PlanMismatchError, match="another shape"):
        plan.apply(model)
    model[1].weight = nn.Parameter(torch.zeros(2, 3), requires_grad=False)  # same shape, a new tensor
    plan.apply(model)
    assert model[1].weight.requires_grad  # applied through the checked path
