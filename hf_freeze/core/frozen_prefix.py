"""Which part of a model a feature cache may skip: the embedding block and the bottom k frozen layers.

The prefix is read from the plan (nothing is re-resolved): the embedding block must be frozen, and
``k`` is the number of bottom layers of the (single) layer stack whose parameters are all frozen.
The *entry* is the module whose output feeds layer 0 (BERT's ``bert.embeddings``, Llama's
``model.embed_tokens``): found from ``get_input_embeddings()`` by walking up while the parent is an
embedding block. Whether the hidden states really flow entry -> layer 0 -> ... -> layer k-1 without
anything in between is checked on the first forward (:mod:`hf_freeze.core.feature_cache`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from torch import nn

from ..errors import FeatureCacheError
from .param_decision import GROUP_EMBEDDINGS
from .plan import FreezePlan

OPTION = "`cache_frozen_features`=True"


@dataclass(frozen=True)
class FrozenPrefix:
    """The cacheable prefix: ``entry`` module path, ``stack`` path, its bottom ``num_layers`` layers."""

    entry: str
    stack: str
    num_layers: int
    stack_length: int

    @property
    def layer_paths(self) -> list[str]:
        return [f"{self.stack}.{i}" if self.stack else str(i) for i in range(self.num_layers)]

    @property
    def capture_path(self) -> str:
        """The last prefix layer: its output is what the cache stores."""
        return self.layer_paths[-1]


def find_frozen_prefix(model: nn.Module, plan: FreezePlan) -> FrozenPrefix:
    """The frozen prefix of ``model`` under ``plan``, or a :class:`FeatureCacheError` saying why there is none.

    Example: BERT with ``freeze_embeddings=True, freeze_layers=":4"`` of 6 layers gives
    ``FrozenPrefix(entry="bert.embeddings", stack="bert.encoder.layer", num_layers=4, stack_length=6)``.
    """
    if len(plan.stacks) != 1:
        paths = [s["path"] for s in plan.stacks]
        raise FeatureCacheError(
            f"{OPTION} needs a model with one layer stack; {plan.model_class} has {len(paths)}: {paths} "
            "(an encoder-decoder or multimodal model enters its second stack from outside the first, so the "
            "cache cannot skip it). Set cache_frozen_features=False for this model."
        )
    stack = plan.stacks[0]
    if stack["num_layers"] != stack["num_blocks"]:
        raise FeatureCacheError(
            f"{OPTION}: the layers of {stack['path']} share parameters ({stack['num_layers']} layers run "
            f"{stack['num_blocks']} blocks), so a bottom layer cannot be skipped on its own. "
            "Set cache_frozen_features=False for this model."
        )
    trainable_embeddings = [p.name for p in plan.params if p.group == GROUP_EMBEDDINGS and p.trainable]
    if trainable_embeddings:
        raise FeatureCacheError(
            f"{OPTION}: the embedding block is part of the cached prefix but {trainable_embeddings[0]!r} trains "
            f"(rule {plan.decision(trainable_embeddings[0]).rule!r}). Set freeze_embeddings=True (and do not "
            "`unfreeze` it), or set cache_frozen_features=False."
        )
    by_layer: dict[int, list] = {}
    for p in plan.params:
        if p.stack == stack["path"] and p.layer is not None:
            by_layer.setdefault(p.layer, []).append(p)
    k = 0
    while k < stack["num_blocks"] and not any(p.trainable for p in by_layer.get(k, [])):
        k += 1
    if k == 0:
        first = next(p for p in by_layer.get(0, []) if p.trainable)
        raise FeatureCacheError(
            f"{OPTION}: no layer of {stack['path']} is frozen from the bottom up, so only the embedding lookup "
            f"could be cached; layer 0 trains ({first.name!r}, rule {first.rule!r}). Freeze the bottom layers "
            "(e.g. freeze_layers=':4') or set cache_frozen_features=False."
        )
    return FrozenPrefix(_entry_path(model, plan), stack["path"], k, stack["num_blocks"])


def _entry_path(model: nn.Module, plan: FreezePlan) -> str:
    names = {id(m): name for name, m in model.named_modules()}
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = None
    with contextlib.suppress(NotImplementedError, AttributeError):
        embeddings = getter() if getter is not None else None
    if embeddings is None or id(embeddings) not in names:
        raise FeatureCacheError(
            f"{OPTION}: {plan.model_class} does not expose its input embeddings (`get_input_embeddings()`), so "
            "the module that feeds layer 0 is unknown and the stack cannot be entered at a cached layer. "
            "Set cache_frozen_features=False for this model."
        )
    path = names[id(embeddings)]
    while "." in path and "embed" in path.rpartition(".")[0].rpartition(".")[2].lower():
        path = path.rpartition(".")[0]
    return path
