"""Core internals: rules are structured values, one walk of the module tree per resolve and per apply,
``freeze_layers`` read once, the norm ownership rule shared by resolve and gradual unfreezing."""

import json

import pytest
import torch
from tiny_models import build

import hf_freeze.core.layer_selection as layer_selection
from hf_freeze import FreezePlan, FreezeSpec, freeze_model
from hf_freeze.core import discovery
from hf_freeze.core import plan as plan_module
from hf_freeze.core import resolve as resolve_module
from hf_freeze.core.rules import AppliedRule, Rule
from hf_freeze.errors import PlanMismatchError

TORCH_WALKS = ("named_modules", "named_parameters", "named_children", "modules", "parameters", "children")


@pytest.fixture
def walks(monkeypatch):
    """Counts walks of the module tree: hf_freeze's own walkers (``walk_model``, and ``param_tensors`` for
    applying a plan to the tensors it was resolved from) and torch's generators (any module)."""
    counts = {"walk_model": 0, **{name: 0 for name in TORCH_WALKS}}
    walk, tensors_walk = discovery.walk_model, plan_module.param_tensors

    def counted_walk(model):
        counts["walk_model"] += 1
        return walk(model)

    def counted_tensors_walk(model):
        counts["walk_model"] += 1
        return tensors_walk(model)

    for module in (discovery, resolve_module, plan_module):
        monkeypatch.setattr(module, "walk_model", counted_walk)
    monkeypatch.setattr(plan_module, "param_tensors", counted_tensors_walk)
    for name in TORCH_WALKS:
        original = getattr(torch.nn.Module, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.nn.Module, name, counted)
    return counts


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("bert", dict(freeze_embeddings=True, freeze_layers=":2", freeze=["attention"], unfreeze=[r"0\.output"])),
        ("bert", dict(freeze_layers="-1:", layer_stack="encoder.layer")),
        ("gpt2", dict(freeze_layers=":1")),  # tied lm_head
        ("resnet", dict(freeze_layers="all")),  # BatchNorm statistics
    ],
)
def test_resolve_and_apply_each_walk_the_module_tree_once(walks, key, options):
    model = build(key)
    for name in walks:
        walks[name] = 0
    spec = FreezeSpec(**options)
    plan = spec.resolve(model)
    assert walks == {"walk_model": 1, **{name: 0 for name in TORCH_WALKS}}
    plan.apply(model)
    assert walks == {"walk_model": 2, **{name: 0 for name in TORCH_WALKS}}


def test_freeze_layers_is_parsed_once(monkeypatch):
    model = build("bert")
    reads = []
    read = layer_selection._read
    monkeypatch.setattr(layer_selection, "_read", lambda text: reads.append(text) or read(text))
    spec = FreezeSpec(freeze_layers="0,2:4")
    spec.resolve(model)
    spec.resolve(model)
    assert reads == ["0,2:4"]


def test_rules_are_structured_and_read_as_text():
    model = build("bert")
    plan = freeze_model(model, freeze_embeddings=True, freeze_layers=":1", freeze=[r"layer\.2\.output"])
    by_kind = {d.rule.kind for d in plan.params}
    assert by_kind == {Rule.FREEZE_EMBEDDINGS, Rule.FREEZE_LAYERS, Rule.FREEZE, Rule.REQUIRES_GRAD, Rule.TRAIN_HEAD}
    pattern = next(d.rule for d in plan.params if d.rule.kind is Rule.FREEZE)
    assert pattern.pattern == r"layer\.2\.output" and str(pattern) == r"freeze:layer\.2\.output"
    assert pattern == r"freeze:layer\.2\.output" and pattern == AppliedRule(Rule.FREEZE, r"layer\.2\.output")
    # Layer membership is data: every layer parameter carries (stack, layer), and the table is ordered by it.
    layer_rows = [row for row in plan.groups() if row["layer"] is not None]
    assert [(row["stack"], row["layer"]) for row in layer_rows] == [("bert.encoder.layer", i) for i in range(4)]
    saved = json.loads(plan.to_json())
    assert {row["rule"] for row in saved["params"]} >= {"freeze_layers", r"freeze:layer\.2\.output"}
    loaded = FreezePlan.from_json(plan.to_json())
    assert [d.rule for d in loaded.params] == [d.rule for d in plan.params]
    assert all(isinstance(d.rule, AppliedRule) for d in loaded.params)
    assert loaded.plan_hash == plan.plan_hash


@pytest.mark.parametrize("text", ["freeze_everything", "freeze", "train_head:classifier"])
def test_unknown_rule_text_in_a_plan_file_is_an_error(text):
    data = json.loads(freeze_model(build("bert"), freeze_layers=":1").to_json())
    data["params"][0]["rule"] = text
    with pytest.raises(PlanMismatchError, match="Unknown rule"):
        FreezePlan.from_dict(data)


def test_unfreezing_records_the_strategy_and_keeps_norm_ownership():
    model = build("resnet")
    plan = freeze_model(model, freeze_layers="all")
    stage2 = [n for n in plan.frozen_names if n.startswith("resnet.encoder.stages.2.")]
    later = plan.with_trainable(stage2)
    assert {later.decision(n).rule.kind for n in stage2} == {Rule.UNFREEZE_STRATEGY}
    released = set(plan.frozen_norms) - set(later.frozen_norms)
    assert released and all(m.startswith("resnet.encoder.stages.2.") for m in released)
    # The same rule decides at resolve time: a plan resolved with stage 2 trainable fixes the same norms.
    direct = FreezeSpec(freeze_layers="all", unfreeze=[r"resnet\.encoder\.stages\.2"]).resolve(build("resnet"))
    assert direct.frozen_norms == later.frozen_norms
