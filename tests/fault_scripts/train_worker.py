"""Training worker for tests/test_faults.py (and benchmarks/long_run.py's sibling checks).

Trains a tiny BERT with FreezingTrainer (embeddings and layers 0-1 frozen, layer-wise LR decay), a
checkpoint every ``--save_steps`` steps. It can stop itself at a chosen point and wait there, so the
test can SIGKILL it exactly there (no timing race):

- ``--hang_after_step K``: in ``on_step_end`` of step K, before that step's checkpoint is written;
- ``--hang_in_save K:PHASE``: while writing checkpoint-K, ``PHASE`` = ``before_optimizer`` (model and
  freeze_plan.json written, optimizer.pt not yet) or ``mid_optimizer`` (half of optimizer.pt written);
  with ``--save_only_trainable`` also ``mid_state`` (half of trainable_state.safetensors written under its
  temporary name) or ``before_manifest`` (the state file in place, trainable_state.json not yet).

It writes ``<marker>`` when it reaches the point, then sleeps. ``--resume`` continues with
``train(resume_from_checkpoint=True)``. At the end it saves the final weights to ``--result``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tiny_models import TokenData, build  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from hf_freeze import FreezingTrainer, FreezingTrainingArguments  # noqa: E402


def hang(marker: str) -> None:
    with open(marker, "w") as handle:
        handle.write(str(os.getpid()))
    while True:
        time.sleep(1)


class HangAfterStep(TrainerCallback):
    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            hang(self.marker)


def hang_in_save(step: int, phase: str, marker: str) -> None:
    """Wrap torch.save (this test process only) to stop inside the write of checkpoint-``step``."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        path = os.fspath(f) if isinstance(f, (str, os.PathLike)) else ""
        if path.endswith(os.path.join(f"checkpoint-{step}", "optimizer.pt")):
            if phase == "mid_optimizer":
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                with open(path, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
            hang(marker)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    if phase in ("mid_state", "before_manifest"):
        hang_in_partial_save(step, phase, marker)


def hang_in_partial_save(step: int, phase: str, marker: str) -> None:
    """Stop inside save_trainable_state for checkpoint-``step`` (the files it writes, in its order)."""
    from hf_freeze.core import checkpoint_files

    real_save_file, real_atomic_write = checkpoint_files.save_file, checkpoint_files._atomic_write
    in_checkpoint = f"{os.sep}checkpoint-{step}{os.sep}"

    def save_file(tensors, path, *args, **kwargs):
        if phase == "mid_state" and in_checkpoint in os.fspath(path):
            real_save_file(tensors, path, *args, **kwargs)
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)
                os.fsync(handle.fileno())
            hang(marker)
        return real_save_file(tensors, path, *args, **kwargs)

    def atomic_write(path, write):
        if phase == "before_manifest" and in_checkpoint in path and path.endswith(checkpoint_files.MANIFEST_FILE):
            hang(marker)
        return real_atomic_write(path, write)

    checkpoint_files.save_file, checkpoint_files._atomic_write = save_file, atomic_write


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--max_steps", type=int, default=8)
    parser.add_argument("--save_steps", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--resume_from", default=None)
    parser.add_argument("--hang_after_step", type=int, default=None)
    parser.add_argument("--hang_in_save", default=None)
    parser.add_argument("--marker", default=None)
    parser.add_argument("--save_only_trainable", action="store_true")
    parser.add_argument("--cache_dir", default=None, help="cache_frozen_features, every feature spilled here")
    cli = parser.parse_args()
    cache = {}
    if cli.cache_dir:  # 8 examples: 2 steps per epoch, so later epochs hit the cache
        cache = dict(cache_frozen_features=True, feature_cache_max_memory_mb=0, feature_cache_dir=cli.cache_dir)

    args = FreezingTrainingArguments(
        cli.output_dir,
        freeze_embeddings=True,
        freeze_layers=":2",
        layer_lr_decay=0.8,
        max_steps=cli.max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="steps",
        save_steps=cli.save_steps,
        logging_steps=1,
        seed=42,
        dataloader_num_workers=0,
        save_only_trainable=cli.save_only_trainable,
        **cache,
    )
    callbacks = [HangAfterStep(cli.hang_after_step, cli.marker)] if cli.hang_after_step else []
    if cli.hang_in_save:
        step, phase = cli.hang_in_save.split(":")
        hang_in_save(int(step), phase, cli.marker)
    model = build("bert")
    trainer = FreezingTrainer(model=model, args=args, train_dataset=TokenData(8 if cache else 32), callbacks=callbacks)
    last = get_last_checkpoint(cli.output_dir) if cli.resume and os.path.isdir(cli.output_dir) else None
    resume = cli.resume_from or (True if last else None)  # True: FreezingTrainer picks the last checkpoint
    trainer.train(resume_from_checkpoint=resume)
    torch.save({n: p.detach().clone() for n, p in model.named_parameters()}, cli.result)
    with open(cli.result + ".json", "w") as handle:
        stats = getattr(trainer, "feature_cache_stats", None)
        json.dump(
            {
                "global_step": trainer.state.global_step,
                "resumed_from": cli.resume_from or last,
                "cache": None if stats is None else {**stats.__dict__},
            },
            handle,
        )


if __name__ == "__main__":
    main()
