"""Cache keys: a digest of each example's prefix inputs, so the cache is keyed by content, never by position.

Only the positions the attention mask keeps are hashed, together with their indexes: an example padded
on the right to another length gets the same key (its prefix output is the same), while a changed token,
a new augmentation or a shifted (left-padded) example gets another (its prefix output differs).
:func:`batch_keys` also reads the model call and refuses the inputs a skipped prefix cannot honour.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import torch
from torch import nn

from ..errors import FeatureCacheError
from .frozen_prefix import OPTION

# Inputs that only the suffix (loss) reads; every other per-example tensor goes into the digest.
SUFFIX_ONLY = frozenset({"labels", "start_positions", "end_positions", "num_items_in_batch", "return_loss"})
# Side outputs a skipped prefix cannot produce.
REFUSED_FLAGS = ("output_attentions", "output_hidden_states")
REFUSED_INPUTS = ("inputs_embeds", "head_mask", "cache", "past_key_values")


def batch_keys(
    model: nn.Module, signature: inspect.Signature, args: tuple, kwargs: dict
) -> tuple[list[bytes], torch.Tensor | None, torch.device]:
    """For one call of ``model``: a key per example, the kept positions ([B, T] bool or None) and the device."""
    bound = dict(signature.bind_partial(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():  # flatten **kwargs
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            bound.update(bound.pop(name, {}))
    _refuse_side_inputs(model, bound)
    tensors = {
        name: value
        for name, value in bound.items()
        if isinstance(value, torch.Tensor) and value.dim() > 0 and name not in SUFFIX_ONLY
    }
    if not tensors:
        raise FeatureCacheError(
            f"{OPTION}: {type(model).__name__} was called without input tensors to key the cache on. Pass "
            "input_ids or pixel_values, or set cache_frozen_features=False."
        )
    size = next(iter(tensors.values())).shape[0]
    mask = bound.get("attention_mask")
    keep = None
    if isinstance(mask, torch.Tensor):
        if mask.dim() != 2:
            raise FeatureCacheError(
                f"{OPTION} needs a 2-D attention_mask [batch, tokens]; got shape {list(mask.shape)}. Pass "
                "the tokenizer's mask, or set cache_frozen_features=False."
            )
        keep = mask.detach().cpu() != 0
    return digests(tensors, keep, size), keep, next(iter(tensors.values())).device


def _refuse_side_inputs(model: nn.Module, bound: dict[str, Any]) -> None:
    config = getattr(model, "config", None)
    for flag in REFUSED_FLAGS:
        if bound.get(flag) or (bound.get(flag) is None and getattr(config, flag, False)):
            raise FeatureCacheError(
                f"{OPTION}: `{flag}` asks for per-layer outputs of the cached prefix, which is skipped on a "
                f"hit. Call the model with {flag}=False, or set cache_frozen_features=False."
            )
    for name in REFUSED_INPUTS:
        if bound.get(name) is not None:
            raise FeatureCacheError(
                f"{OPTION}: the model was called with `{name}`, which the cache cannot key or skip "
                f"(it is keyed on input ids/pixel values). Drop `{name}`, or set cache_frozen_features=False."
            )


def digests(tensors: dict[str, torch.Tensor], keep: torch.Tensor | None, size: int) -> list[bytes]:
    """One 16-byte BLAKE2 digest per example: each input's row at the kept positions, and those positions."""
    rows = {name: _raw(value.detach().cpu()) for name, value in sorted(tensors.items()) if value.shape[0] == size}
    keys = []
    for i in range(size):
        h = hashlib.blake2b(digest_size=16)
        kept = keep[i] if keep is not None else None
        if kept is not None:
            h.update(b"positions" + kept.nonzero().numpy().tobytes())
        for name, value in rows.items():
            if name == "attention_mask":
                continue
            row = value[i]
            if kept is not None and row.dim() >= 1 and row.shape[0] == kept.shape[0]:
                row = row[kept]
            h.update(f"{name}{tuple(row.shape)}{row.dtype}".encode())
            h.update(row.contiguous().numpy().tobytes())
        keys.append(h.digest())
    return keys


def _raw(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype in (torch.bfloat16, torch.float16):
        return tensor.view(torch.int16)
    return tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
