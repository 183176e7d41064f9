"""Discovery across architectures: stacks, embedding block, head, ties, and freeze_layers slices.

Expected values are written out per model (no per-model table exists in the library itself). Module
paths that differ between the supported transformers versions are looked up by module class instead
(:class:`Located`), so every version is checked against its own layout.
"""

from dataclasses import dataclass

import pytest
from tiny_models import build
from torch import nn

from hf_freeze import FreezeSpec, LayerStackNotFoundError, SharedLayersError
from hf_freeze.core.discovery import discover


@dataclass(frozen=True)
class Located:
    """The path of the one module of class ``cls`` in the model, or of the ModuleList holding such blocks.

    For paths that moved between transformers versions: ViT's layer list is ``vit.encoder.layer`` in 4.57 and
    ``vit.layers`` in 5.x; LLaVA's CLIP vision tower gained a ``vision_model.`` level in 4.57.
    """

    cls: str
    suffix: str = ""

    def path(self, model: nn.Module) -> str:
        found = [
            name
            for name, module in model.named_modules()
            if type(module).__name__ == self.cls
            or (isinstance(module, nn.ModuleList) and len(module) and type(module[0]).__name__ == self.cls)
        ]
        lists = [n for n in found if isinstance(model.get_submodule(n), nn.ModuleList)]
        found = lists or found
        assert len(found) == 1, f"expected one {self.cls} (or list of them) in {type(model).__name__}, got {found}"
        return found[0] + self.suffix


def path(model: nn.Module, where: str | Located) -> str:
    return where.path(model) if isinstance(where, Located) else where


# model: (stacks [(path, num_layers)], embedding prefixes, exact head names, ties)
EXPECTED = {
    "bert": ([("bert.encoder.layer", 4)], ["bert.embeddings."], {"classifier.weight", "classifier.bias"}, []),
    "roberta": (
        [("roberta.encoder.layer", 4)],
        ["roberta.embeddings."],
        {
            "classifier.dense.weight",
            "classifier.dense.bias",
            "classifier.out_proj.weight",
            "classifier.out_proj.bias",
        },
        [],
    ),
    "distilbert": (
        [("distilbert.transformer.layer", 4)],
        ["distilbert.embeddings."],
        {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"},
        [],
    ),
    "albert": (
        [("albert.encoder.albert_layer_groups", 4)],
        ["albert.embeddings.", "albert.encoder.embedding_hidden_mapping_in."],
        {"classifier.weight", "classifier.bias"},
        [],
    ),
    "deberta_v2": (
        [("deberta.encoder.layer", 4)],
        ["deberta.embeddings.", "deberta.encoder.rel_embeddings."],
        {"classifier.weight", "classifier.bias", "pooler.dense.weight", "pooler.dense.bias"},
        [],
    ),
    "electra": (
        [("electra.encoder.layer", 4)],
        ["electra.embeddings.", "electra.embeddings_project."],
        {
            "classifier.dense.weight",
            "classifier.dense.bias",
            "classifier.out_proj.weight",
            "classifier.out_proj.bias",
        },
        [],
    ),
    "gpt2": (
        [("transformer.h", 4)],
        ["transformer.wte.", "transformer.wpe."],
        {"transformer.wte.weight"},
        [{"transformer.wte.weight", "lm_head.weight"}],
    ),
    "llama": ([("model.layers", 4)], ["model.embed_tokens."], {"lm_head.weight"}, []),
    "mistral": ([("model.layers", 4)], ["model.embed_tokens."], {"lm_head.weight"}, []),
    "qwen2": ([("model.layers", 4)], ["model.embed_tokens."], {"lm_head.weight"}, []),
    "mixtral": ([("model.layers", 4)], ["model.embed_tokens."], {"lm_head.weight"}, []),
    "t5": (
        [("encoder.block", 3), ("decoder.block", 2)],
        ["shared."],
        {"shared.weight"},
        [{"shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}],
    ),
    "bart": (
        [("model.encoder.layers", 3), ("model.decoder.layers", 2)],
        [
            "model.shared.",
            "model.encoder.embed_positions.",
            "model.decoder.embed_positions.",
            "model.encoder.layernorm_embedding.",
            "model.decoder.layernorm_embedding.",
        ],
        {"model.shared.weight"},
        [
            {
                "model.shared.weight",
                "model.encoder.embed_tokens.weight",
                "model.decoder.embed_tokens.weight",
                "lm_head.weight",
            }
        ],
    ),
    "vit": ([(Located("ViTLayer"), 4)], ["vit.embeddings."], {"classifier.weight", "classifier.bias"}, []),
    "swin": (
        [("swin.encoder.layers", 2)],
        ["swin.embeddings."],
        {"classifier.weight", "classifier.bias"},
        [],
    ),
    "convnext": (
        [("convnext.encoder.stages", 3)],
        ["convnext.embeddings."],
        {"classifier.weight", "classifier.bias"},
        [],
    ),
    "resnet": (
        [("resnet.encoder.stages", 3)],
        ["resnet.embedder."],
        {"classifier.1.weight", "classifier.1.bias"},
        [],
    ),
    "wav2vec2": (
        [("wav2vec2.encoder.layers", 2)],
        ["wav2vec2.encoder.pos_conv_embed.", "wav2vec2.masked_spec_embed"],
        {"classifier.weight", "classifier.bias", "projector.weight", "projector.bias"},
        [],
    ),
    "clip": (
        [("text_model.encoder.layers", 2), ("vision_model.encoder.layers", 3)],
        ["text_model.embeddings.", "vision_model.embeddings."],
        set(),
        [],
    ),
    "llava": (
        [(Located("CLIPEncoderLayer"), 2), ("model.language_model.layers", 3)],
        [Located("CLIPVisionEmbeddings", "."), "model.language_model.embed_tokens."],
        {"lm_head.weight"},
        [],
    ),
}


def names(model):
    return [n for n, _ in model.named_parameters()]


def under(name, prefixes):
    return any(name.startswith(p) for p in prefixes)


@pytest.fixture(scope="module")
def models():
    return {}


def get(models, key):
    if key not in models:
        models[key] = build(key)
    return models[key]


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_structure(models, key):
    stacks, emb_prefixes, head, ties = EXPECTED[key]
    model = get(models, key)
    found = discover(model)
    assert [(s.path, s.num_layers) for s in found.stacks] == [(path(model, p), n) for p, n in stacks]
    emb_prefixes = [path(model, p) for p in emb_prefixes]
    assert found.embedding_names == {n for n in names(model) if under(n, emb_prefixes)}
    assert found.head_names == head
    assert [set(t) for t in found.aliases.values() if len(t) > 1] == ties


@pytest.mark.parametrize("key", sorted(k for k in EXPECTED if k != "albert"))  # shared: test_albert_shared_layers
@pytest.mark.parametrize("selection", ["-1:", ":1", "all", "0,-1"])
def test_freeze_layers_slices_give_exact_names(models, key, selection):
    stacks = EXPECTED[key][0]
    model = get(models, key)
    spec = FreezeSpec(freeze_layers=selection, train_head=False, freeze_strict=True)
    expected = set()
    for where, count in stacks:
        indices = {"-1:": [count - 1], ":1": [0], "all": range(count), "0,-1": [0, count - 1]}[selection]
        expected |= {n for n in names(model) for i in indices if n.startswith(f"{path(model, where)}.{i}.")}
    if len(expected) == len(names(model)):
        pytest.skip("the selection freezes everything")
    plan = spec.resolve(model)
    assert set(plan.frozen_names) == expected
    assert all(plan.decision(n).rule == "freeze_layers" for n in expected)


def test_layer_stack_names_one_stack(models):
    model = get(models, "t5")
    plan = FreezeSpec(freeze_layers="-1:", layer_stack="decoder", train_head=False).resolve(model)
    assert set(plan.frozen_names) == {n for n in names(model) if n.startswith("decoder.block.1.")}
    plan = FreezeSpec(freeze_layers=":2", layer_stack="language_model").resolve(get(models, "llava"))
    assert {d.layer for d in plan.params if not d.trainable} == {0, 1}
    assert {d.stack for d in plan.params if not d.trainable} == {"model.language_model.layers"}


def test_layer_stack_can_name_a_module_list_discovery_skipped(models):
    # Wav2Vec2's feature-encoder convolutions are not a main stack, but the user can name them.
    model = get(models, "wav2vec2")
    plan = FreezeSpec(freeze_layers="all", layer_stack="feature_extractor.conv_layers").resolve(model)
    assert set(plan.frozen_names) == {n for n in names(model) if n.startswith("wav2vec2.feature_extractor.")}


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc(x)


class _SequentialNet(nn.Module):
    """torchvision/timm style: the blocks live in an nn.Sequential, next to other Sequentials."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
        self.blocks = nn.Sequential(*[_Block() for _ in range(4)])
        self.head = nn.Linear(4, 2)


def test_a_stack_held_in_an_nn_sequential_is_found_and_can_be_named():
    model = _SequentialNet()
    blocks_01 = {n for n in names(model) if n.startswith(("blocks.0.", "blocks.1."))}
    named = FreezeSpec(freeze_layers=":2", layer_stack="blocks").resolve(model)
    assert set(named.frozen_names) == blocks_01
    assert {d.layer for d in named.params if d.stack == "blocks"} == {0, 1, 2, 3}
    found = FreezeSpec(freeze_layers=":2").resolve(model)  # no ModuleList: discovery falls back to Sequentials
    assert set(found.frozen_names) == blocks_01
    with pytest.raises(LayerStackNotFoundError, match=r"Candidates: \['stem', 'blocks'\]"):
        FreezeSpec(freeze_layers=":1", layer_stack="layers").resolve(model)


def test_freeze_embeddings_freezes_exactly_the_embedding_block(models):
    model = get(models, "bert")
    plan = FreezeSpec(freeze_embeddings=True).resolve(model)
    assert set(plan.frozen_names) == {n for n in names(model) if n.startswith("bert.embeddings.")}


def test_albert_shared_layers(models):
    model = get(models, "albert")  # 4 layers sharing 2 parameter groups
    plan = FreezeSpec(freeze_layers=":2").resolve(model)
    assert set(plan.frozen_names) == {n for n in names(model) if n.startswith("albert.encoder.albert_layer_groups.0.")}
    with pytest.raises(SharedLayersError, match=r"`freeze_layers`=':1'.*share 2 parameter group"):
        FreezeSpec(freeze_layers=":1").resolve(model)
    plan = FreezeSpec(freeze_layers="all").resolve(model)
    assert all(n not in plan.trainable_names for n in names(model) if ".albert_layer_groups." in n)


def test_tied_weights_are_one_parameter_in_the_plan(models):
    plan = FreezeSpec().resolve(get(models, "gpt2"))
    assert "lm_head.weight" not in [p.name for p in plan.params]
    assert plan.decision("lm_head.weight").name == "transformer.wte.weight"
    assert plan.ties == [["transformer.wte.weight", "lm_head.weight"]]
    assert plan.total_numel == sum(p.numel() for p in get(models, "gpt2").parameters())
