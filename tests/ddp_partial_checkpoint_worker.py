"""Worker for tests/test_checkpointing_distributed.py: save_only_trainable on 2 CPU processes (DDP).

Trains 6 steps with partial checkpoints at steps 3 and 6, then resumes a fresh model from checkpoint-3
in the same process group, and writes per rank: world size, the checkpoint's files, and digests of
the uninterrupted and the resumed parameters.

    accelerate launch --multi_gpu --num_processes 2 tests/ddp_partial_checkpoint_worker.py --output_dir /tmp/o
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from distributed_scripts.worker_end import gather_and_end  # noqa: E402
from tiny_models import (
    TokenData,  # noqa: E402
    build,  # noqa: E402
)

from hf_freeze import FreezingTrainer, FreezingTrainingArguments  # noqa: E402


def digest(model: torch.nn.Module) -> str:
    sha = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        sha.update(name.encode() + param.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--result", required=True)
    cli = parser.parse_args()

    def args() -> FreezingTrainingArguments:
        return FreezingTrainingArguments(
            cli.output_dir,
            use_cpu=True,  # without it each process trains alone (notes/distributed-cpu.md)
            per_device_train_batch_size=2,
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            learning_rate=1e-2,
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            freeze_embeddings=True,
            freeze_layers=":2",
            save_only_trainable=True,
        )

    model = build("bert")
    trainer = FreezingTrainer(model=model, args=args(), train_dataset=TokenData())
    trainer.train()
    dist.barrier()
    checkpoint = os.path.join(cli.output_dir, "checkpoint-3")
    files = sorted(os.listdir(checkpoint))

    resumed_model = build("bert")
    resumed = FreezingTrainer(model=resumed_model, args=args(), train_dataset=TokenData())
    resumed.train(resume_from_checkpoint=checkpoint)

    report = {
        "rank": dist.get_rank(),
        "world_size": trainer.args.world_size,
        "parallel_mode": str(trainer.args.parallel_mode),
        "files": files,
        "full": digest(model),
        "resumed": digest(resumed_model),
        "step": resumed.state.global_step,
    }
    gather_and_end(cli.result, report)


if __name__ == "__main__":
    main()
