"""Step time and peak accelerator memory of a real recipe run (``scripts/gpu_check.sh``).

Handed to a recipe as a callback by ``benchmarks/timed_recipe.py``, so the recipes carry no timing
code of their own. It writes one JSON record on the main process when training ends.
"""

from __future__ import annotations

import json
import os
import time

from transformers import TrainerCallback


class StepPerfCallback(TrainerCallback):
    """Wall time of every optimizer step (synchronised on GPU) and the peak accelerator memory of the run."""

    def __init__(self, path: str, warmup_steps: int = 5) -> None:
        self.path, self.warmup_steps, self.times, self._start = path, warmup_steps, [], 0.0

    @staticmethod
    def _sync() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self._start)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import statistics

        import torch

        if not state.is_world_process_zero:
            return
        measured = self.times[self.warmup_steps :] or self.times
        cuda = torch.cuda.is_available()
        params = {id(p): p for p in model.parameters()}.values() if model is not None else []
        record = {
            "steps": len(self.times),
            "median_step_s": statistics.median(measured) if measured else None,
            "mean_step_s": statistics.fmean(measured) if measured else None,
            "peak_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "peak_memory_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "bf16": bool(args.bf16),
            "distributed_type": str(getattr(getattr(args, "distributed_state", None), "distributed_type", "")),
        }
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)
