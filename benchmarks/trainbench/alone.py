"""Run one case alone in a fresh process and measure its memory, optimizer state and gradients.

Peak resident memory is a property of a whole process, so each case gets its own: the parent starts
``run_benchmarks.py --worker_case CASE`` and reads one JSON line back. Every worker imports the same
modules (transformers, peft, hf_freeze) so that the cases differ only in what they train.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import transformers

from . import measure
from .cases import BenchSettings, load_model, prepare_case

RESULT_PREFIX = "BENCH_RESULT "


class _SizeProbe(transformers.TrainerCallback):
    """After the first backward: gradient bytes; after the first optimizer step: its state bytes."""

    def __init__(self) -> None:
        self.sizes: dict[str, Any] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step == 0:
            self.sizes["grad_bytes"] = measure.gradient_bytes(model)
            self.sizes["optimizer_params"] = measure.optimizer_numel(optimizer)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step == 1:
            self.sizes["optimizer_state_bytes"] = measure.optimizer_state_bytes(optimizer)


def _import_training_stack() -> None:
    """Import what building a ``Trainer`` or a ``FreezingTrainer`` imports (accelerate, datasets, DeepSpeed where
    installed, hf-freeze), so every case starts from the same resident memory and differs only in training."""
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import transformers.trainer  # noqa: F401

    import hf_freeze.core.resolve  # noqa: F401
    import hf_freeze.training.arguments  # noqa: F401 - hf-freeze's own import cost (~1 MiB) is the same in every case
    import hf_freeze.training.trainer  # noqa: F401

    if importlib.util.find_spec("deepspeed") is not None:
        import deepspeed  # noqa: F401


def measure_alone(case_id: str, settings: BenchSettings) -> dict[str, Any]:
    """Build and run ``case_id`` in this process for ``settings.steps`` steps; return its sizes."""
    _import_training_stack()
    prepared = prepare_case(case_id, load_model(settings.model, settings.seed), settings)
    probe = _SizeProbe()
    if prepared.trainer is not None:
        prepared.trainer.add_callback(probe)
    gc.collect()
    rss_before = measure.current_rss_bytes()
    peak_reset = measure.reset_peak_rss()
    prepared.run(lambda: None, lambda: None)
    result: dict[str, Any] = {
        "case": case_id,
        "peak_rss_bytes": measure.peak_rss_bytes(),
        "peak_rss_is_training_only": peak_reset,
        "rss_before_bytes": rss_before,
        "process_peak_rss_bytes": measure.process_peak_rss_bytes(),
        "grad_bytes": 0,
        "optimizer_state_bytes": {"per_parameter": 0, "other": 0, "total": 0},
        "optimizer_params": 0,
        "losses": [float(loss) for loss in prepared.losses],
    }
    result.update(probe.sizes)
    model = prepared.trainer.model if prepared.trainer is not None else prepared.model
    sizes = measure.describe(model)
    if prepared.trainer is None:
        sizes["trainable_params"] = 0  # a forward pass trains nothing
    result.update(sizes)
    return result


def run_in_subprocess(
    case_id: str, script: str, flags: list[str], env: dict[str, str] | None = None, timeout_s: float = 600
) -> dict[str, Any]:
    """Measure ``case_id`` alone in a child process running ``script --worker_case CASE *flags``."""
    command = [sys.executable, script, "--worker_case", case_id, *flags]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", **(env or {}))
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"benchmark worker for {case_id!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def worker_main(case_id: str, settings: BenchSettings) -> None:
    print(RESULT_PREFIX + json.dumps(measure_alone(case_id, settings)), flush=True)
