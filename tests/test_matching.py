"""The one matcher: whole dot-separated segments (SPEC 3, "Matching")."""

import pytest
import torch
from tiny_models import build
from torch import nn

from hf_freeze import FreezeSpec, InvalidPatternError, compile_pattern, matches

# (pattern, name, expected)
CASES = [
    ("embeddings", "bert.embeddings.word_embeddings.weight", True),
    ("word_embeddings", "bert.embeddings.word_embeddings.weight", True),
    ("embedding", "bert.embeddings.word_embeddings.weight", False),
    ("layer.1", "bert.encoder.layer.1.output.dense.bias", True),
    ("layer.1", "bert.encoder.layer.10.output.dense.bias", False),
    ("layer.1", "bert.encoder.layer.11.attention.self.query.weight", False),
    (r"layer\.1", "bert.encoder.layer.1.output.dense.bias", True),
    ("id", "text_id.weight", False),
    ("id", "model.id.weight", True),
    ("classifier", "pre_classifier.weight", False),
    ("classifier", "classifier.weight", True),
    ("classifier", "classifier.out_proj.bias", True),
    (r"layer\.[0-3]", "bert.encoder.layer.3.output.dense.bias", True),
    (r"layer\.[0-3]", "bert.encoder.layer.4.output.dense.bias", False),
    (r"layer\.\d+\.attention", "bert.encoder.layer.7.attention.self.key.weight", True),
    ("bias", "bert.encoder.layer.7.attention.self.key.bias", True),
    ("bias", "final_logits_bias", False),
    ("encoder.layer.0", "bert.encoder.layer.0.output.dense.bias", True),
    ("bert.encoder", "bert.encoder.layer.0.output.dense.bias", True),
    ("ert.encoder", "bert.encoder.layer.0.output.dense.bias", False),
    ("lm_head|embed_tokens", "model.embed_tokens.weight", True),
    ("lm_head|embed_tokens", "lm_head.weight", True),
    ("lm_head|embed_tokens", "model.norm.weight", False),
]


@pytest.mark.parametrize("pattern,name,expected", CASES)
def test_pattern_matches_whole_segments(pattern, name, expected):
    assert matches(compile_pattern(pattern), name) is expected


def test_invalid_regex_names_pattern_and_error():
    with pytest.raises(InvalidPatternError, match=r"`unfreeze` pattern 'layer\.\[0' .*regular expression"):
        FreezeSpec(unfreeze=["layer.[0"])
    with pytest.raises(ValueError):  # the hierarchy subclasses ValueError
        compile_pattern("(", "freeze")


class TwoTowers(nn.Module):
    def __init__(self):
        super().__init__()
        self.text_id = nn.Linear(2, 2)
        self.id = nn.Linear(2, 2)
        self.encoder = nn.Linear(2, 2)
        self.decoder = nn.Linear(2, 2)
        self.pooler = nn.Linear(2, 2)


def test_unfreeze_list_of_two_modules_keeps_both_trainable():
    # The hand-written loop `if name.split('.')[0] != layer: freeze` over a two-name list freezes
    # everything; the plan must keep both named modules trainable and freeze the rest.
    torch.manual_seed(0)
    model = TwoTowers()
    plan = FreezeSpec(freeze=[".*"], unfreeze=["encoder", "decoder"]).resolve(model)
    assert sorted(plan.trainable_names) == [
        "decoder.bias",
        "decoder.weight",
        "encoder.bias",
        "encoder.weight",
    ]
    assert plan.pattern_hits["unfreeze"] == {"encoder": 2, "decoder": 2}


def test_id_does_not_hit_text_id():
    model = TwoTowers()
    plan = FreezeSpec(freeze=["id"]).resolve(model)
    assert sorted(plan.frozen_names) == ["id.bias", "id.weight"]


def test_layer_1_does_not_hit_layer_10_or_11():
    torch.manual_seed(0)
    import transformers as tf

    model = tf.BertModel(
        tf.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=12, num_attention_heads=2, intermediate_size=8)
    )
    plan = FreezeSpec(freeze=["layer.1"]).resolve(model)
    assert plan.frozen_names and all(n.startswith("encoder.layer.1.") for n in plan.frozen_names)
    assert len(plan.frozen_names) == len([n for n, _ in model.encoder.layer[1].named_parameters()])


def test_classifier_does_not_hit_pre_classifier():
    model = build("distilbert")
    plan = FreezeSpec(freeze=["classifier"], train_head=False).resolve(model)
    assert sorted(plan.frozen_names) == ["classifier.bias", "classifier.weight"]
