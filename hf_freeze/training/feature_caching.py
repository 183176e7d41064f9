"""``FreezingTrainer`` side of frozen-prefix feature caching (``cache_frozen_features``).

The core (:mod:`hf_freeze.core.feature_cache`) does the work; this module checks the options and the
training setup before any step, installs the cache for one ``train()`` call and removes it after,
reports hits and misses at every log step (and warns when augmentation defeats the cache), and after
each gradual-unfreezing event makes the cache follow the new plan (a shorter prefix, or none).
Under DDP every rank installs its own cache and keys what it sees; nothing is exchanged between ranks.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from ..core.feature_cache import CacheStats, FeatureCache
from ..core.plan import FreezePlan
from ..errors import InvalidOptionError

logger = logging.getLogger("hf_freeze")

# A miss rate above this after the first epoch means the cache mostly costs memory (augmented inputs).
HIGH_MISS_RATE = 0.5


def check_options(args: Any) -> None:
    """Validate the cache options when the arguments are built (called from ``__post_init__``)."""
    budget = getattr(args, "feature_cache_max_memory_mb", None)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 0:
        raise InvalidOptionError(
            f"`feature_cache_max_memory_mb`={budget!r} is not valid: use a finite number of MiB >= 0, e.g. 2048 "
            "(0 keeps every cached feature in the memory-mapped file in `feature_cache_dir`)."
        )


def install(trainer: Any, model: Any = None) -> FeatureCache | None:
    """Install the cache on ``model`` (default ``trainer.model``) for this ``train()`` call, or None when
    the option is off."""
    args = trainer.args
    if not getattr(args, "cache_frozen_features", False):
        return None
    _check_setup(trainer)
    cache = FeatureCache.install(
        trainer.model if model is None else model,
        trainer.freeze_plan,
        max_memory_bytes=int(args.feature_cache_max_memory_mb * 2**20),
        cache_dir=args.feature_cache_dir,
    )
    trainer.feature_cache = cache
    trainer.add_callback(FeatureCacheCallback(cache, lambda: trainer.freeze_plan))
    if trainer.accelerator.is_main_process:
        logger.info(f"Feature cache: {_describe(cache)}")
    return cache


def _describe(cache: FeatureCache) -> str:
    prefix = cache.prefix
    if prefix is None:
        return "off: the embeddings or layer 0 train now, so no frozen prefix is left to cache."
    ranks = " (per process)" if torch.distributed.is_initialized() else ""
    return (
        f"{prefix.entry} and layers 0-{prefix.num_layers - 1} of {prefix.stack} ({prefix.num_layers} of "
        f"{prefix.stack_length}) run once per distinct input{ranks}, in eval mode."
    )


def uninstall(trainer: Any, cache: FeatureCache | None) -> None:
    """Remove the hooks and the stored features; the final counters stay in ``trainer.feature_cache_stats``."""
    if cache is None:
        return
    trainer.feature_cache_stats = cache.stats()
    trainer.remove_callback(FeatureCacheCallback)
    cache.remove()
    trainer.feature_cache = None


def _check_setup(trainer: Any) -> None:
    """Refuse, before any step, the setups where a cached prefix would be wrong or is untested."""
    option = "`cache_frozen_features`=True"
    args = trainer.args
    if trainer.freeze_plan is None or not trainer.freeze_plan.frozen_names:
        raise InvalidOptionError(
            f"{option} caches the frozen prefix, but nothing is frozen. Set freeze_embeddings=True and "
            "freeze_layers (e.g. ':4'), or set cache_frozen_features=False."
        )
    _check_folder(args.feature_cache_dir)
    backend = _dynamo_backend(trainer)
    setups = {
        "DeepSpeed": trainer.is_deepspeed_enabled,
        "FSDP": trainer.is_fsdp_enabled,
        "torch_compile": bool(getattr(args, "torch_compile", False)),
        f"Accelerate's dynamo_backend={backend!r}": backend != "NO",
    }
    for name, active in setups.items():
        if active:
            raise InvalidOptionError(
                f"{option} is supported on one process and under DDP without compilation, not under {name} (it "
                "shards or recompiles the modules the cache skips; not tested there). Train with DDP or on one "
                "process without compilation (torch_compile=False, Accelerate's dynamo_backend 'no'), or set "
                "cache_frozen_features=False."
            )


def _dynamo_backend(trainer: Any) -> str:
    """The backend Accelerate will compile the model with when it prepares it, however it was asked for:
    ``torch_compile``, ``accelerate launch --dynamo_backend`` or a config's ``dynamo_backend`` (both exported
    as ``ACCELERATE_DYNAMO_BACKEND``, which transformers 4.57 also reads with ``torch_compile=False``)."""
    plugin = trainer.accelerator.state.dynamo_plugin
    return "NO" if plugin is None else plugin.backend.value.upper()


def _check_folder(folder: str | None) -> None:
    """The spill file's folder is created on the first spill, mid-run: refuse now a path that cannot be one."""
    if folder is None:
        return
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InvalidOptionError(
            f"`feature_cache_dir`={folder!r} cannot be a folder: {existing!r} is a file. Give a folder for the "
            "spill file (created if missing), or leave it unset for the system temporary folder."
        )


class FeatureCacheCallback(TrainerCallback):
    """Adds the cache counters to each log, warns once when most inputs miss after the first epoch, and
    retargets the cache when the trainer's plan changes (``current_plan``: gradual unfreezing)."""

    def __init__(self, cache: FeatureCache, current_plan: Callable[[], FreezePlan | None]) -> None:
        self.cache, self.current_plan = cache, current_plan
        self._plan = current_plan()
        self._epoch_start = CacheStats()
        self._warned = False

    def _follow_plan(self, state: Any) -> None:
        """Called after every hook that may follow an unfreezing event (this callback runs after
        GradualUnfreezing's) and before every step, so no forward runs on a prefix that now trains."""
        plan = self.current_plan()
        if plan is self._plan or plan is None:
            return
        self._plan = plan
        if self.cache.retarget(plan) and state.is_world_process_zero:
            logger.info(
                f"Feature cache after unfreezing stage {plan.stage}, stored features dropped: {_describe(self.cache)}"
            )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._follow_plan(state)  # a resumed run replays its unfreezing stage when the optimizer is built

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._follow_plan(state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._follow_plan(state)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_start = self.cache.stats()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._follow_plan(state)
        now, start = self.cache.stats(), self._epoch_start
        hits, misses = now.hits - start.hits, now.misses - start.misses
        rate = misses / (hits + misses) if hits + misses else 0.0
        if state.epoch is not None and state.epoch > 1.0 + 1e-6 and rate > HIGH_MISS_RATE and not self._warned:
            self._warned = True
            if state.is_world_process_zero:
                logger.warning(
                    f"Feature cache: {rate:.0%} of the inputs missed in epoch {round(state.epoch)} (after the first), "
                    "so "
                    "the cache saves little and costs memory; inputs that change every epoch (augmentation, random "
                    "token dropout) defeat it. Set cache_frozen_features=False if this is expected."
                )

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        stats = self.cache.stats()
        entry = {
            "feature_cache_hits": stats.hits,
            "feature_cache_misses": stats.misses,
            "feature_cache_mib": round((stats.memory_bytes + stats.disk_bytes) / 2**20, 3),
        }
        if state.log_history:
            state.log_history[-1].update(entry)
        if state.is_world_process_zero:
            logger.info(
                f"Feature cache: {stats.hits} hits, {stats.misses} misses ({stats.miss_rate:.1%} missed), "
                f"{stats.entries} examples, {stats.memory_bytes / 2**20:.1f} MiB in memory, "
                f"{stats.disk_bytes / 2**20:.1f} MiB on disk"
            )
