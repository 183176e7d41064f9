"""Frozen-prefix feature caching: run the frozen embeddings + bottom k layers once per distinct input.

How it works (no model code is copied or changed; ``remove()`` restores the model):

- A forward pre-hook on the top model reads the batch (``input_ids``, ``attention_mask``,
  ``token_type_ids``, ``pixel_values``, ...) and computes one digest per example from the *content*
  of its inputs at the positions the attention mask keeps (plus those positions), never from its
  index in the dataset. So dynamic padding, shuffling and a new batch composition still hit, while
  augmentation or a changed dataset is a miss, never a stale hit.
- Miss (any example of the batch unknown): the real prefix runs, in eval mode (no dropout) under
  ``torch.no_grad()``; the output of layer k-1 is stored per example, only at kept positions.
- Hit (every example known): the entry module (BERT's ``embeddings``) returns the stored features
  re-padded to this batch (zeros at padded positions, which the attention mask hides), and the
  prefix layers hand their input through unchanged, in the output format recorded on the first miss.
- The first miss also checks, once, what a static plan cannot see: that nothing trainable feeds the
  prefix's output (it runs with grad enabled and the autograd graph is searched for parameters) and
  that the hidden states flow entry -> layer 0 -> ... -> layer k-1 with nothing in between.

Example (a plain PyTorch loop):
    >>> plan = freeze_model(model, freeze_embeddings=True, freeze_layers=":4")  # doctest: +SKIP
    >>> cache = FeatureCache.install(model, plan)                              # doctest: +SKIP
    >>> ...train...; print(cache.stats()); cache.remove()                      # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import FeatureCacheError
from .feature_keys import digests
from .feature_store import FeatureStore
from .frozen_prefix import OPTION, FrozenPrefix, find_frozen_prefix
from .plan import FreezePlan

DEFAULT_MAX_MEMORY_MB = 2048
# Inputs that only the suffix (loss) reads; every other per-example tensor goes into the digest.
SUFFIX_ONLY = frozenset({"labels", "start_positions", "end_positions", "num_items_in_batch", "return_loss"})
# Side outputs a skipped prefix cannot produce.
REFUSED_FLAGS = ("output_attentions", "output_hidden_states")
REFUSED_INPUTS = ("inputs_embeds", "head_mask", "cache", "past_key_values")


@dataclass
class CacheStats:
    """Counters: ``hits``/``misses`` count examples; ``prefix_runs``/``prefix_skips`` count forwards."""

    hits: int = 0
    misses: int = 0
    prefix_runs: int = 0
    prefix_skips: int = 0
    entries: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0

    @property
    def miss_rate(self) -> float:
        total = self.hits + self.misses
        return self.misses / total if total else 0.0


@dataclass
class _Batch:
    keys: list[bytes]
    keep: torch.Tensor | None  # [B, T] bool, or None: every position
    found: list[torch.Tensor] | None  # all cached features (a hit), else None
    device: torch.device


class FeatureCache:
    """The installed cache; build it with :meth:`install`, undo it with :meth:`remove`."""

    def __init__(self, model: nn.Module, prefix: FrozenPrefix, store: FeatureStore) -> None:
        self.model, self.prefix, self.store = model, prefix, store
        modules = dict(model.named_modules())
        self._entry = modules[prefix.entry]
        self._layers = [modules[path] for path in prefix.layer_paths]
        self._signature = inspect.signature(model.forward)
        self._counts = CacheStats()
        self._batch: _Batch | None = None
        self._validated = False
        self._formats: list[Callable[[torch.Tensor], Any]] = []
        self._trace: list[Any] = []
        self._patched: list[tuple[nn.Module, Any]] = []
        self._handles = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]
        self._patch(self._entry, self._entry_forward)
        for index, layer in enumerate(self._layers):
            self._patch(layer, self._layer_forward(index))

    @classmethod
    def install(
        cls,
        model: nn.Module,
        plan: FreezePlan,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_MB * 2**20,
        cache_dir: str | os.PathLike | None = None,
    ) -> FeatureCache:
        """Check that ``plan`` leaves a frozen prefix in ``model`` and hook the cache in."""
        return cls(model, find_frozen_prefix(model, plan), FeatureStore(max_memory_bytes, cache_dir))

    def stats(self) -> CacheStats:
        counts = self._counts
        return CacheStats(
            counts.hits,
            counts.misses,
            counts.prefix_runs,
            counts.prefix_skips,
            len(self.store),
            self.store.memory_bytes,
            self.store.disk_bytes,
        )

    def clear(self) -> None:
        """Forget every stored feature (e.g. after the prefix's weights changed)."""
        self.store.close()

    def remove(self) -> None:
        """Unhook everything and delete the stored features; the model is as before :meth:`install`."""
        for handle in self._handles:
            handle.remove()
        for module, previous in self._patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous
        self._handles, self._patched = [], []
        self.store.close()

    # ------------------------------------------------------------------ hooks
    def _patch(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        self._patched.append((module, module.__dict__.get("forward")))
        original = module.forward
        module.forward = lambda *args, **kwargs: forward(module, original, args, kwargs)

    def _before_forward(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        bound = dict(self._signature.bind_partial(*args, **kwargs).arguments)
        for name, parameter in self._signature.parameters.items():  # flatten **kwargs
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                bound.update(bound.pop(name, {}))
        self._refuse_side_inputs(model, bound)
        if "use_cache" in self._signature.parameters and "use_cache" not in bound:
            kwargs = {**kwargs, "use_cache": False}  # a key/value cache would miss the skipped layers
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
        keys = digests(tensors, keep, size)
        found = [self.store.get(key) for key in keys]
        hits = sum(f is not None for f in found)
        self._counts.hits += hits
        self._counts.misses += len(keys) - hits
        hit = self._validated and hits == len(keys)
        device = next(iter(tensors.values())).device
        self._batch = _Batch(keys, keep, found if hit else None, device)
        if hit:
            self._counts.prefix_skips += 1
        else:
            self._counts.prefix_runs += 1
        return args, kwargs

    def _after_forward(self, *unused: Any) -> None:
        self._batch = None

    def _refuse_side_inputs(self, model: nn.Module, bound: dict[str, Any]) -> None:
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

    def _run_prefix(self, module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
        """The real module, in eval mode; without grad once the first forward has been checked."""
        was_training = module.training
        module.train(False)
        try:
            with torch.no_grad() if self._validated else torch.enable_grad():
                return original(*args, **kwargs)
        finally:
            module.train(was_training)

    def _entry_forward(self, module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
        batch = self._batch
        if batch is not None and batch.found is not None:
            return self._repad(batch)
        out = self._run_prefix(module, original, args, kwargs)
        if batch is not None and not self._validated:
            self._trace = [(self.prefix.entry, out)]
        return out

    def _layer_forward(self, index: int) -> Callable[..., Any]:
        def forward(module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
            batch = self._batch
            hidden = args[0] if args else kwargs.get("hidden_states")
            if batch is not None and batch.found is not None:
                return self._formats[index](hidden)
            out = self._run_prefix(module, original, args, kwargs)
            if batch is None:
                return out
            if not self._validated:
                self._check_flow(index, hidden, out)
            if index == len(self._layers) - 1:
                self._store(batch, _hidden_of(out))
            return out

        return forward

    # ------------------------------------------------------------------ first-miss checks
    def _check_flow(self, index: int, hidden: Any, out: Any) -> None:
        path = self.prefix.layer_paths[index]
        previous, previous_out = self._trace[-1] if self._trace else (None, None)
        if previous is None or hidden is not previous_out:
            where = f"between {previous} and {path}" if previous else f"before {path}"
            raise FeatureCacheError(
                f"{OPTION}: the hidden states are changed {where} by code outside those modules (a projection, "
                f"scaling or extra layer), so the stack of {type(self.model).__name__} cannot be entered at layer "
                f"{self.prefix.num_layers}. Set cache_frozen_features=False for this model."
            )
        self._formats.append(_output_format(path, out))
        result = _hidden_of(out)
        self._trace.append((path, result))
        if index == len(self._layers) - 1:
            if result.requires_grad:
                names = _params_feeding(result, self.model)
                raise FeatureCacheError(
                    f"{OPTION}: the cached prefix (embeddings and layers 0-{index} of {self.prefix.stack}) uses "
                    f"trainable parameter(s) {names[:3]}, so its output changes during training. Freeze them "
                    "(`freeze` patterns) or set cache_frozen_features=False."
                )
            self._validated = True

    # ------------------------------------------------------------------ storage
    def _store(self, batch: _Batch, hidden: torch.Tensor) -> None:
        if hidden.dim() < 2 or hidden.shape[0] != len(batch.keys):
            raise FeatureCacheError(
                f"{OPTION}: {self.prefix.capture_path} returned shape {list(hidden.shape)}, not [batch, positions, "
                f"...] for a batch of {len(batch.keys)}. Set cache_frozen_features=False for this model."
            )
        if batch.keep is not None and batch.keep.shape[1] != hidden.shape[1]:
            raise FeatureCacheError(
                f"{OPTION}: {self.prefix.capture_path} returned {hidden.shape[1]} positions for an attention mask "
                f"of {batch.keep.shape[1]}, so the mask cannot say which positions to keep. Set "
                "cache_frozen_features=False for this model."
            )
        detached = hidden.detach()
        for i, key in enumerate(batch.keys):
            if key not in self.store:
                self.store.put(key, detached[i] if batch.keep is None else detached[i][batch.keep[i].to(hidden.device)])

    def _repad(self, batch: _Batch) -> torch.Tensor:
        found = batch.found
        if batch.keep is None:
            return torch.stack(found).to(batch.device)
        rows, width = batch.keep.shape
        out = found[0].new_zeros((rows, width, *found[0].shape[1:]))
        out[batch.keep] = torch.cat(found)
        return out.to(batch.device)


def _hidden_of(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def _output_format(path: str, out: Any) -> Callable[[torch.Tensor], Any]:
    """How a layer returns its hidden states (a tensor, or a tuple led by it), to rebuild on a hit."""
    if isinstance(out, torch.Tensor):
        return lambda hidden: hidden
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor) and all(o is None for o in out[1:]):
        rest = (None,) * (len(out) - 1)
        return lambda hidden: (hidden, *rest)
    raise FeatureCacheError(
        f"{OPTION}: {path} returns {type(out).__name__} with side outputs the suffix may need, which a skipped "
        "layer cannot reproduce. Set cache_frozen_features=False for this model."
    )


def _params_feeding(tensor: torch.Tensor, model: nn.Module) -> list[str]:
    """Names of the parameters the autograd graph of ``tensor`` reaches, in model order."""
    seen, stack, leaves = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    names = [name for name, param in model.named_parameters() if id(param) in leaves]
    return names or ["<an input that requires grad>"]
