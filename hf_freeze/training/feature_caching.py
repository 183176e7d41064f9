"""``FreezingTrainer`` side of frozen-prefix feature caching (``cache_frozen_features``).

The core (:mod:`hf_freeze.core.feature_cache`) does the work; this module checks the options and the
training setup before any step, installs the cache for one ``train()`` call and removes it after,
and reports hits and misses at every log step (and warns when augmentation defeats the cache).
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from ..core.feature_cache import CacheStats, FeatureCache
from ..errors import InvalidOptionError

logger = logging.getLogger("hf_freeze")

# A miss rate above this after the first epoch means the cache mostly costs memory (augmented inputs).
HIGH_MISS_RATE = 0.5


def check_options(args: Any) -> None:
    """Validate the cache options when the arguments are built (called from ``__post_init__``)."""
    budget = getattr(args, "feature_cache_max_memory_mb", None)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
        raise InvalidOptionError(
            f"`feature_cache_max_memory_mb`={budget!r} is not valid: use a number of MiB >= 0, e.g. 2048 "
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
    trainer.add_callback(FeatureCacheCallback(cache))
    if trainer.accelerator.is_main_process:
        prefix = cache.prefix
        logger.info(
            f"Feature cache: {prefix.entry} and layers 0-{prefix.num_layers - 1} of {prefix.stack} "
            f"({prefix.num_layers} of {prefix.stack_length}) run once per distinct input, in eval mode."
        )
    return cache


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
    if getattr(args, "unfreeze_strategy", "no") != "no":
        raise InvalidOptionError(
            f"{option} cannot be combined with `unfreeze_strategy`={args.unfreeze_strategy!r}: an unfreezing event "
            "changes the cached prefix (not supported yet). Set one of them off."
        )
    setups = {
        "DeepSpeed": trainer.is_deepspeed_enabled,
        "FSDP": trainer.is_fsdp_enabled,
        f"DDP (world size {args.world_size})": args.world_size > 1,
        "torch_compile": bool(getattr(args, "torch_compile", False)),
    }
    for name, active in setups.items():
        if active:
            raise InvalidOptionError(
                f"{option} is supported on one process without compilation, not under {name} (not tested there "
                "yet). Train on one process, or set cache_frozen_features=False."
            )


class FeatureCacheCallback(TrainerCallback):
    """Adds the cache counters to each log and warns once when most inputs miss after the first epoch."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache
        self._epoch_start = CacheStats()
        self._warned = False

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_start = self.cache.stats()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
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
