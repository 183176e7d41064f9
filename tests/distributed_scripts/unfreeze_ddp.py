"""Worker for tests/test_unfreeze_ddp.py: gradual unfreezing through FreezingTrainer under DDP.

``accelerate launch --multi_gpu --num_processes 2`` runs it on two CPU processes (gloo); ``--reference``
runs the same global batches in one process. Three unfreezing events (layers 2, 1, 0 of a tiny BERT),
gradient accumulation 2, optional clipping. Rank 0 writes, for every rank: sha256 of every parameter, the
parameters themselves, and per optimizer step a sha256 per layer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tiny_models import TEXT, TokenData  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback  # noqa: E402
from worker_end import gather_and_end  # noqa: E402

from hf_freeze import FreezingTrainer, FreezingTrainingArguments  # noqa: E402

LAYERS = 4


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


class LayerHashes(TrainerCallback):
    """After every optimizer step: one sha256 per encoder layer."""

    def __init__(self) -> None:
        self.steps: list[dict[str, str]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        named = dict(model.named_parameters())
        self.steps.append(
            {
                str(i): digest(torch.cat([p.reshape(-1) for n, p in named.items() if f"encoder.layer.{i}." in n]))
                for i in range(LAYERS)
            }
        )


class KillRank(TrainerCallback):
    """SIGKILLs this process at the end of optimizer step ``step`` on rank ``rank`` (a crashed node)."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and args.process_index == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


class InOrderTrainer(FreezingTrainer):
    """No shuffling, so one process with batches of 8 sees the same global batches as two ranks with 4 each
    (accelerate hands consecutive batches to consecutive ranks)."""

    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("--reference", action="store_true", help="one process, global batches of 8")
    parser.add_argument("--clip", type=float, default=0.0)
    parser.add_argument("--output_dir", default=None, help="checkpoints go here (with --save_steps)")
    parser.add_argument("--save_steps", type=int, default=0, help="save a checkpoint every N steps")
    parser.add_argument("--resume_from", default=None, help="a checkpoint-N folder to resume from")
    parser.add_argument("--kill", default=None, metavar="RANK:STEP", help="SIGKILL rank RANK after step STEP")
    parser.add_argument("--save_only_trainable", action="store_true", help="partial checkpoints")
    options = parser.parse_args()

    args = FreezingTrainingArguments(
        options.output_dir or os.path.dirname(options.result),
        use_cpu=True,  # without it each process trains alone (see notes/distributed-cpu.md)
        freeze_embeddings=True,
        freeze_layers=":3",
        unfreeze_strategy="steps",
        unfreeze_steps=2,
        max_steps=7,
        per_device_train_batch_size=8 if options.reference else 4,
        gradient_accumulation_steps=2,
        max_grad_norm=options.clip,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        report_to="none",
        save_strategy="steps" if options.save_steps else "no",
        save_steps=options.save_steps or 500,
        disable_tqdm=True,
        dataloader_drop_last=True,
        seed=0,
        save_only_trainable=options.save_only_trainable,
    )
    torch.manual_seed(0)  # seeded before the build: identical weights on every rank
    # no dropout: one process and two ranks draw different masks, and the runs are compared number for number
    model = BertForSequenceClassification(
        BertConfig(
            num_hidden_layers=LAYERS, **{**TEXT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        )
    )
    model.accepts_loss_kwargs = False  # BERT ignores num_items_in_batch: keep Trainer's loss scaling plain
    hashes = LayerHashes()
    callbacks = [hashes]
    if options.kill:
        rank, step = options.kill.split(":")
        callbacks.append(KillRank(int(rank), int(step)))
    trainer = InOrderTrainer(model=model, args=args, train_dataset=TokenData(64), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=options.resume_from)
    named = dict(trainer.model.named_parameters())
    sync = trainer._unfreezing.grad_sync
    mine = {
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "parallel_mode": str(trainer.args.parallel_mode),
        "stage": trainer.freeze_plan.stage,
        "checksums": {n: digest(p) for n, p in named.items()},
        "params": {n: p.detach().reshape(-1).tolist() for n, p in named.items()},
        "steps": hashes.steps,
        "late_syncs": sync.syncs if sync is not None else 0,
        "hooks_left": len(sync._handles) if sync is not None else 0,
    }
    if options.reference:
        with open(options.result, "w") as handle:
            json.dump([mine], handle)
        return
    gather_and_end(options.result, mine)


if __name__ == "__main__":
    main()
