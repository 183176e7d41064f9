"""A recipe run from start to end: logging, the output-dir guard, the common train-evaluate-save
ending with its summary, and a clean exit (also under ``torch.distributed``).

``run`` turns bad input into one error line; ``run_recipe_file`` runs a recipe script with extra
callbacks, for tests and benchmarks that instrument a recipe without the recipe knowing about them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from hf_freeze import PLAN_FILE
from hf_freeze.errors import FreezeError, InvalidOptionError

if TYPE_CHECKING:
    from recipe_args import DataArguments

logger = logging.getLogger("hf_freeze")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def check_output_dir(training_args, data_args: DataArguments) -> None:
    """Refuse to write over a previous run unless asked to (or resuming it)."""
    out = training_args.output_dir
    if not out or not os.path.isdir(out) or not os.listdir(out):
        return
    overwrite = any(getattr(a, "overwrite_output_dir", False) for a in (data_args, training_args))
    if overwrite or training_args.resume_from_checkpoint:
        return
    found = sorted(os.listdir(out))[:4]
    raise InvalidOptionError(
        f"`output_dir`={out!r} already holds a previous run ({', '.join(found)}, ...). Pass "
        "--overwrite_output_dir to write over it, --resume_from_checkpoint to continue it, or choose "
        "another --output_dir."
    )


def train_evaluate_report(trainer, processor, recipe: str, started: float, headline: list[str], extra_eval=None):
    """The common end of every recipe: train (resuming if asked), evaluate, save the outputs, print the
    summary. ``extra_eval`` derives more metrics from the eval ones."""
    train_result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    eval_metrics = trainer.evaluate()
    if extra_eval is not None:
        eval_metrics.update(extra_eval(eval_metrics))
    save_outputs(trainer, processor, {"train": train_result.metrics, "eval": eval_metrics})
    metrics = {**train_result.metrics, **eval_metrics}
    print_summary(recipe, trainer, metrics, started, headline)
    return metrics


def setup_logging(training_args) -> None:
    """transformers-style logging: INFO on the main process (the plan table), warnings elsewhere."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    if training_args.should_log and level > logging.INFO:
        level = logging.INFO if training_args.log_level == "passive" else level
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))


def save_outputs(trainer, tokenizer_or_processor, metrics: dict[str, dict[str, float]]) -> None:
    """Model, tokenizer/processor, ``freeze_plan.json`` (the trainer writes it), metrics and state."""
    trainer.save_model()
    if tokenizer_or_processor is not None and trainer.is_world_process_zero():
        tokenizer_or_processor.save_pretrained(trainer.args.output_dir)
    for split, values in metrics.items():
        trainer.log_metrics(split, values)
        trainer.save_metrics(split, values)
    trainer.save_state()


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def print_summary(recipe: str, trainer, metrics: dict[str, float], started: float, headline: Iterable[str]) -> str:
    """The last lines of a run: trainable share, the headline metrics, time, where the outputs are."""
    out = trainer.args.output_dir
    lines = [f"== hf-freeze {recipe}: done =="]
    plan = getattr(trainer, "freeze_plan", None)
    if plan is not None:
        lines.append(
            f"trainable: {plan.trainable_numel:,} of {plan.total_numel:,} parameters "
            f"({plan.trainable_percent:.1f}%), plan {plan.plan_hash}"
        )
    else:
        params = {id(p): p for p in trainer.accelerator.unwrap_model(trainer.model).parameters()}.values()
        total, trainable = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
        lines.append(
            f"trainable: {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.1f}%), "
            "no freezing option set"
        )
    shown = [f"{key}: {metrics[key]:.4f}" for key in headline if key in metrics]
    if shown:
        lines.append(" | ".join(shown))
    lines.append(
        f"time: {format_seconds(time.time() - started)} total, "
        f"{format_seconds(metrics.get('train_runtime', 0.0))} training, "
        f"{trainer.accelerator.num_processes} process(es) on {trainer.args.device.type}"
    )
    saved = f"model, {PLAN_FILE}, all_results.json" if plan is not None else "model, all_results.json"
    lines.append(f"outputs: {os.path.abspath(out)} ({saved})")
    text = "\n".join(lines)
    if trainer.is_world_process_zero():
        print(text, flush=True)
    return text


def finish(code: int = 0) -> None:
    """End the process; under torch.distributed end it cleanly.

    A worker sometimes aborts at interpreter exit ("terminate called without an active exception")
    after training finished, and the launcher then reports failure. A barrier, destroying the process
    group, flushing and ``os._exit`` avoids it.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if code == 0:
                dist.barrier()
        finally:
            dist.destroy_process_group()
            for handler in logging.getLogger().handlers + logger.handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    sys.exit(code)


def run(main: Callable[[], Any]) -> None:
    """Run a recipe's ``main()``; bad input ends with a one-line error (exit code 2), not a traceback."""
    code = 0
    try:
        main()
    except FreezeError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        code = 2
    finish(code)


def run_recipe_file(path: str, args: list[str] | None = None, callbacks: Sequence[TrainerCallback] = ()) -> None:
    """Run the recipe script at ``path`` as ``run`` does, its trainer getting ``callbacks`` too.

    Instrumentation (the tests' checksum recorder, the benchmarks' step timer) lives with whoever
    measures; a wrapper script hands it in here, and the recipe stays free of it:

    >>> run_recipe_file("recipes/text_classification.py", ["--max_steps", "2"], [MyCallback()])  # doctest: +SKIP
    """
    if not os.path.isfile(path):
        raise InvalidOptionError(f"{path!r}: no such recipe script; pass e.g. recipes/text_classification.py.")
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:  # a recipe imports its helper modules from its own folder
        sys.path.insert(0, folder)
    name = "recipe_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run(partial(module.main, args, callbacks=list(callbacks)))
