"""Frozen-prefix feature caching: run the frozen embeddings + bottom k layers once per distinct input.

How it works (no model code is copied or changed; ``remove()`` restores the model):

- A forward pre-hook on the top model reads the batch and computes one digest per example from the
  *content* of its inputs (:mod:`.feature_keys`), never from its index in the dataset. So dynamic
  padding, shuffling, a new batch composition or another DDP shard still hit, while augmentation or a
  changed dataset is a miss, never a stale hit.
- Miss (any example of the batch unknown): the real prefix runs, in eval mode (no dropout) under
  ``torch.no_grad()``; the output of layer k-1 is stored per example, only at kept positions.
- Hit (every example known): the entry module (BERT's ``embeddings``) returns the stored features
  re-padded to this batch (zeros at padded positions, which the attention mask hides), and the
  prefix layers hand their input through unchanged, in the output format recorded on the first miss.
- The first miss also checks, once, what a static plan cannot see (:mod:`.prefix_check`): that nothing
  trainable feeds the prefix's output and that the hidden states flow entry -> layer 0 -> ... -> layer
  k-1 with nothing in between.
- :meth:`FeatureCache.retarget` follows a new plan (gradual unfreezing): an event that reaches into
  the prefix drops the stored features and caches the shorter prefix that is still frozen, or stops
  caching when none is left. Each process caches what it sees (one cache per DDP rank).

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
from .feature_keys import batch_keys
from .feature_store import FeatureStore
from .frozen_prefix import OPTION, FrozenPrefix, find_frozen_prefix
from .plan import FreezePlan
from .prefix_check import PrefixCheck, hidden_of

DEFAULT_MAX_MEMORY_MB = 2048


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
    """The installed cache; build it with :meth:`install`, follow a new plan with :meth:`retarget`, undo it
    with :meth:`remove`. ``prefix`` is None once nothing is left to cache (the model then runs as usual)."""

    def __init__(self, model: nn.Module, prefix: FrozenPrefix, store: FeatureStore) -> None:
        self.model, self.store = model, store
        self.prefix: FrozenPrefix | None = None
        self._signature = inspect.signature(model.forward)
        self._counts = CacheStats()
        self._batch: _Batch | None = None
        self._patched: list[tuple[nn.Module, Any]] = []
        self._handles = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]
        self._attach(prefix)

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

    def retarget(self, plan: FreezePlan) -> bool:
        """Follow ``plan`` (e.g. after a gradual-unfreezing event); True when the cached prefix changed.

        The prefix is what ``plan`` leaves frozen from the bottom: the same one keeps its features; a shorter
        one drops them (they are the output of a layer that now trains) and is filled again from the next
        batches; none (layer 0 or the embeddings train) stops caching for good.
        """
        try:
            prefix = find_frozen_prefix(self.model, plan)
        except FeatureCacheError:
            prefix = None
        if prefix == self.prefix:
            return False
        self._detach()
        self.clear()
        if prefix is not None:
            self._attach(prefix)
        return True

    def remove(self) -> None:
        """Unhook everything and delete the stored features; the model is as before :meth:`install`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._detach()
        self.clear()

    # ------------------------------------------------------------------ hooks
    def _attach(self, prefix: FrozenPrefix) -> None:
        modules = dict(self.model.named_modules())
        self.prefix, self._check = prefix, PrefixCheck(self.model, prefix)
        self._patch(modules[prefix.entry], self._entry_forward)
        for index, path in enumerate(prefix.layer_paths):
            self._patch(modules[path], self._layer_forward(index))

    def _detach(self) -> None:
        for module, previous in self._patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous
        self._patched, self.prefix = [], None

    def _patch(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        self._patched.append((module, module.__dict__.get("forward")))
        original = module.forward
        module.forward = lambda *args, **kwargs: forward(module, original, args, kwargs)

    def _before_forward(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.prefix is None:
            return args, kwargs
        keys, keep, device = batch_keys(model, self._signature, args, kwargs)
        if "use_cache" in self._signature.parameters and kwargs.get("use_cache") is None:
            kwargs = {**kwargs, "use_cache": False}  # a key/value cache would miss the skipped layers
        found = [self.store.get(key) for key in keys]
        hits = sum(f is not None for f in found)
        self._counts.hits += hits
        self._counts.misses += len(keys) - hits
        hit = self._check.done and hits == len(keys)
        self._batch = _Batch(keys, keep, found if hit else None, device)
        if hit:
            self._counts.prefix_skips += 1
        else:
            self._counts.prefix_runs += 1
        return args, kwargs

    def _after_forward(self, *unused: Any) -> None:
        self._batch = None

    def _run_prefix(self, module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
        """The real module, in eval mode; without grad once the first forward has been checked."""
        was_training = module.training
        module.train(False)
        try:
            with torch.no_grad() if self._check.done else torch.enable_grad():
                return original(*args, **kwargs)
        finally:
            module.train(was_training)

    def _entry_forward(self, module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
        batch = self._batch
        if batch is not None and batch.found is not None:
            return self._repad(batch)
        out = self._run_prefix(module, original, args, kwargs)
        if batch is not None and not self._check.done:
            self._check.saw_entry(out)
        return out

    def _layer_forward(self, index: int) -> Callable[..., Any]:
        def forward(module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
            batch = self._batch
            hidden = args[0] if args else kwargs.get("hidden_states")
            if batch is not None and batch.found is not None:
                return self._check.formats[index](hidden)
            out = self._run_prefix(module, original, args, kwargs)
            if batch is None:
                return out
            if not self._check.done:
                self._check.saw_layer(index, hidden, out)
            if index == self.prefix.num_layers - 1:
                self._store(batch, hidden_of(out))
            return out

        return forward

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
