"""Precedence (SPEC 3): requires_grad < freeze_embeddings/freeze_layers < freeze < unfreeze < train_head.

train_head protects the head from the freezing rules and never trains what arrived frozen.

One test per pair of levels; each records both the outcome and the rule that decided it.
"""

import pytest
from tiny_models import build

from hf_freeze import FreezeSpec, TiedWeightsConflictError

EMB = "bert.embeddings.word_embeddings.weight"
L0 = "bert.encoder.layer.0.output.dense.weight"
L3 = "bert.encoder.layer.3.output.dense.weight"
HEAD = "classifier.weight"


def decide(spec, prepare=None, name=L0, model="bert"):
    m = build(model)
    if prepare:
        prepare(m)
    d = spec.resolve(m).decision(name)
    return d.trainable, d.rule


def freeze_all(m):
    m.requires_grad_(False)


def freeze_base(m):
    m.bert.requires_grad_(False)


def test_no_rule_keeps_the_models_own_flags():
    assert decide(FreezeSpec(), freeze_base, name=L3, model="bert") == (False, "requires_grad")
    assert decide(FreezeSpec(), freeze_base, name=HEAD, model="bert") == (True, "train_head")
    assert decide(FreezeSpec(), name=L3) == (True, "requires_grad")


def test_shortcuts_beat_requires_grad():
    assert decide(FreezeSpec(freeze_layers=":1")) == (False, "freeze_layers")
    assert decide(FreezeSpec(freeze_embeddings=True), name=EMB) == (False, "freeze_embeddings")


def test_shortcuts_leave_other_parameters_at_requires_grad():
    # A parameter frozen on arrival and outside the shortcut stays frozen (refined, not reset).
    def freeze_l3(m):
        m.bert.encoder.layer[3].requires_grad_(False)

    assert decide(FreezeSpec(freeze_layers=":1"), freeze_l3, name=L3) == (False, "requires_grad")


def test_freeze_beats_requires_grad():
    assert decide(FreezeSpec(freeze=["layer.0"])) == (False, "freeze:layer.0")


def test_freeze_beats_shortcuts():
    assert decide(FreezeSpec(freeze_layers=":1", freeze=["output"])) == (False, "freeze:output")


def test_unfreeze_beats_requires_grad():
    assert decide(FreezeSpec(unfreeze=["layer.0"]), freeze_all) == (True, "unfreeze:layer.0")


def test_unfreeze_beats_shortcuts():
    assert decide(FreezeSpec(freeze_layers=":2", unfreeze=["layer.0.output"])) == (
        True,
        "unfreeze:layer.0.output",
    )
    assert decide(FreezeSpec(freeze_embeddings=True, unfreeze=["word_embeddings"]), name=EMB) == (
        True,
        "unfreeze:word_embeddings",
    )


def test_unfreeze_beats_freeze():
    assert decide(FreezeSpec(freeze=["encoder"], unfreeze=["layer.0"])) == (True, "unfreeze:layer.0")


def test_train_head_never_trains_what_arrived_frozen():
    # train_head protects the head from this plan's freezing rules; a head that arrived frozen (PEFT)
    # stays frozen unless an unfreeze pattern names it.
    assert decide(FreezeSpec(unfreeze=["layer.0"]), freeze_all, name=HEAD) == (False, "requires_grad")
    assert decide(FreezeSpec(unfreeze=["layer.0"], train_head=False), freeze_all, name=HEAD) == (
        False,
        "requires_grad",
    )


def test_freezing_rules_decide_only_what_arrived_trainable():
    # An arrived-frozen parameter keeps its own rule, so gradual unfreezing never brings it back.
    spec = FreezeSpec(freeze_layers=":1", freeze=["output"], unfreeze=["layer.3"])
    assert decide(spec, freeze_all, name=L0) == (False, "requires_grad")
    assert decide(FreezeSpec(freeze_embeddings=True, unfreeze=["layer.3"]), freeze_all, name=EMB) == (
        False,
        "requires_grad",
    )


def test_train_head_beats_freeze():
    assert decide(FreezeSpec(freeze=["classifier"]), name=HEAD) == (True, "train_head")
    assert decide(FreezeSpec(freeze=["classifier"], train_head=False), name=HEAD) == (
        False,
        "freeze:classifier",
    )


def test_train_head_beats_unfreeze():
    assert decide(FreezeSpec(freeze=["classifier"], unfreeze=["classifier"]), name=HEAD) == (True, "train_head")
    # Only unfreeze trains a head that arrived frozen, and it is the rule that decided it.
    assert decide(FreezeSpec(unfreeze=["classifier"]), freeze_all, name=HEAD) == (True, "unfreeze:classifier")


def test_train_head_against_shortcuts_on_a_tied_head_is_reported():
    # GPT-2's lm_head.weight is transformer.wte.weight: freezing the embeddings while training the
    # head is a contradiction that must be reported, not silently resolved either way.
    with pytest.raises(
        TiedWeightsConflictError, match=r"'transformer.wte.weight' and 'lm_head.weight'.*freeze_embeddings"
    ):
        FreezeSpec(freeze_embeddings=True).resolve(build("gpt2"))
    with pytest.raises(TiedWeightsConflictError, match=r"freeze:wte"):
        FreezeSpec(freeze=["wte"]).resolve(build("gpt2"))
    # Each way out resolves it explicitly.
    plan = FreezeSpec(freeze_embeddings=True, train_head=False).resolve(build("gpt2"))
    assert plan.decision("lm_head.weight").trainable is False
    plan = FreezeSpec(freeze_embeddings=True, unfreeze=["wte"]).resolve(build("gpt2"))
    assert plan.decision("transformer.wte.weight").trainable is True
    assert plan.decision("transformer.wpe.weight").trainable is False


def test_peft_model_is_refined_not_reset():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        build("bert"), peft.LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS")
    )
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    plan = FreezeSpec(freeze_layers=":2").resolve(model)
    plan.apply(model)
    after = {n for n, p in model.named_parameters() if p.requires_grad}
    # LoRA weights in layers 0-1 are frozen, those in 2-3 and the saved classifier copy still train;
    # no base weight was switched on, and PEFT's unused original classifier stays frozen.
    assert after == {n for n in before if not any(f".layer.{i}." in n for i in (0, 1))}
    assert any(".layer.2." in n and "lora_A" in n for n in after)
    assert "base_model.model.classifier.modules_to_save.default.weight" in after
    assert "base_model.model.classifier.original_module.weight" not in after
    assert not any("base_layer" in n for n in after)
