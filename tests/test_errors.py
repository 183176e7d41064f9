"""Every misuse gets a FreezeError (a ValueError) that names the option, the value and the fix."""

import pytest
from tiny_models import build

from hf_freeze import (
    FreezeError,
    FreezePlan,
    FreezeSpec,
    InvalidOptionError,
    InvalidPatternError,
    LayerRangeError,
    LayerStackNotFoundError,
    NoTrainableParametersError,
    PatternNotFoundError,
    PlanMismatchError,
    SharedLayersError,
    TiedWeightsConflictError,
    freeze_model,
)


@pytest.mark.parametrize(
    "options,error,message",
    [
        (dict(freeze=["layer.(0"]), InvalidPatternError, r"`freeze` pattern 'layer.\(0'.*missing \)"),
        (dict(freeze=[""]), InvalidPatternError, r"`freeze` holds ''"),
        (dict(freeze=[3]), InvalidOptionError, r"`freeze`=\[3\]"),
        (dict(freeze_layers="1:x"), LayerRangeError, r"`freeze_layers`='1:x'.*cannot read '1:x'"),
        (dict(freeze_layers="::0"), LayerRangeError, r"step cannot be zero"),
        (dict(freeze_layers=-2), LayerRangeError, r"`freeze_layers`=-2 .*write '-2:'"),
        (dict(freeze_layers=True), LayerRangeError, r"`freeze_layers`=True"),
        (dict(train_head="yes"), InvalidOptionError, r"`train_head`='yes'.*True or False"),
        (dict(layer_stack="enc("), InvalidPatternError, r"`layer_stack` pattern 'enc\('"),
    ],
)
def test_bad_options_fail_on_construction(options, error, message):
    with pytest.raises(error, match=message) as info:
        FreezeSpec(**options)
    assert isinstance(info.value, FreezeError) and isinstance(info.value, ValueError)


def test_pattern_matching_nothing_lists_closest_names():
    with pytest.raises(
        PatternNotFoundError, match=r"`freeze` pattern 'embedding' matched no parameter.*bert\.embeddings"
    ):
        freeze_model(build("bert"), freeze=["embedding"])


def test_pattern_matching_nothing_only_warns_when_not_strict(caplog):
    plan = freeze_model(build("bert"), freeze=["embedding", "layer.0"], freeze_strict=False)
    assert plan.pattern_hits["freeze"] == {"embedding": 0, "layer.0": 16}
    assert "matched no parameter" in caplog.text


@pytest.mark.parametrize(
    "value,what",
    [
        ("5:", "slice bound 5 is outside"),
        ("-5:", "slice bound -5"),
        ("4:", "selects no layer"),
        ("3:1", "selects no layer"),
        ("0,4", "index 4"),
        (5, "the bottom 5 layers"),
        ("7", "the bottom 7"),
    ],
)
def test_layer_out_of_range_says_how_many_layers(value, what):
    with pytest.raises(LayerRangeError, match=rf"`freeze_layers`={str(value)!r}:? {what}.*has 4 layers"):
        freeze_model(build("bert"), freeze_layers=value)


def test_no_layer_stack_found_says_how_to_name_one():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with pytest.raises(LayerStackNotFoundError, match=r"`freeze_layers`=':1': no layer stack.*`layer_stack`"):
        freeze_model(model, freeze_layers=":1")
    with pytest.raises(LayerStackNotFoundError, match=r"`layer_stack`='blocks' matches no nn.ModuleList"):
        freeze_model(build("bert"), freeze_layers=":1", layer_stack="blocks")


def test_plan_with_nothing_trainable():
    with pytest.raises(NoTrainableParametersError, match=r"no trainable parameter.*freeze:\.\*"):
        freeze_model(build("bert"), freeze=[".*"], train_head=False)


def test_shared_layers():
    with pytest.raises(SharedLayersError, match=r"`freeze_layers`='1:3'.*only be frozen together"):
        freeze_model(build("albert"), freeze_layers="1:3")


def test_tie_between_frozen_and_trained_name():
    with pytest.raises(TiedWeightsConflictError, match=r"'shared.weight'.*`freeze_embeddings`.*`train_head`=True"):
        freeze_model(build("t5"), freeze_embeddings=True)


def test_plan_applied_to_another_model():
    plan = FreezeSpec(freeze_layers=":1").resolve(build("bert"))
    with pytest.raises(
        PlanMismatchError, match=r"made for BertForSequenceClassification.*RobertaForSequenceClassification"
    ):
        plan.apply(build("roberta"))


def test_edited_plan_file_is_rejected(tmp_path):
    plan = FreezeSpec(freeze_layers=":1").resolve(build("bert"))
    text = plan.to_json().replace('"trainable": false', '"trainable": true', 1)
    with pytest.raises(PlanMismatchError, match="hash"):
        FreezePlan.from_json(text)
