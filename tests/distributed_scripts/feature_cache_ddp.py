"""Worker for tests/test_feature_cache_ddp.py: frozen-prefix feature caching under DDP through FreezingTrainer.

``accelerate launch --multi_gpu --num_processes 2`` runs it on two CPU processes (gloo). A tiny BERT (dropout
on) trains with shuffling, dynamic padding, gradient accumulation and evaluation during training, either with
``cache_frozen_features`` (``--cached``) or without it and with the frozen prefix in eval mode, the reference
the cached run must equal; ``--unfreeze`` adds gradual unfreezing into the prefix. Rank 0 writes, for every
rank: sha256 and values of every parameter, the logged losses and the rank's cache counters.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tiny_models import TEXT  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402
from worker_end import gather_and_end  # noqa: E402

from hf_freeze import FreezingTrainer, FreezingTrainingArguments  # noqa: E402

LAYERS = 4


class Texts(torch.utils.data.Dataset):
    """3-11 tokens per example, so batches pad to different lengths."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, 12, (n,), generator=g)
        self.rows = [torch.randint(5, 99, (int(k),), generator=g).tolist() for k in lengths]
        self.y = torch.randint(0, 2, (n,), generator=g).tolist()

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.y[i]}


def pad(features):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.tensor([f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features])
    return {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "labels": torch.tensor([f["labels"] for f in features]),
    }


def eval_mode_prefix(model: torch.nn.Module) -> None:
    """The reference: the embeddings and the bottom frozen layers (read from requires_grad before every
    forward, at least layer 0) run in eval mode."""
    blocks = [model.bert.embeddings, *model.bert.encoder.layer]

    def hook(*_):
        if any(p.requires_grad for p in blocks[1].parameters()):
            return  # layer 0 trains: no prefix, the frozen embeddings run as in a plain run
        for block in blocks:
            if any(p.requires_grad for p in block.parameters()):
                break
            block.eval()

    if not any(p.requires_grad for p in blocks[1].parameters()):
        model.register_forward_pre_hook(hook)


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("--cached", action="store_true")
    parser.add_argument("--unfreeze", action="store_true", help="layers 2, 1, 0 come back every 3 steps")
    options = parser.parse_args()
    unfreezing = dict(unfreeze_strategy="steps", unfreeze_steps=3) if options.unfreeze else {}
    args = FreezingTrainingArguments(
        os.path.dirname(options.result),
        use_cpu=True,  # without it each process trains alone (see notes/distributed-cpu.md)
        freeze_embeddings=True,
        freeze_layers=":3",
        cache_frozen_features=options.cached,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=3,
        gradient_accumulation_steps=2,
        num_train_epochs=5,
        learning_rate=5e-2,
        optim="sgd",  # Adam would blow float noise up to full-size steps (see tests/test_feature_cache.py)
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=7,
        **unfreezing,
    )
    torch.manual_seed(0)  # seeded before the build: identical weights on every rank
    model = BertForSequenceClassification(BertConfig(num_hidden_layers=LAYERS, **TEXT))
    model.accepts_loss_kwargs = False
    trainer = FreezingTrainer(
        model=model, args=args, train_dataset=Texts(24, 1), eval_dataset=Texts(12, 3), data_collator=pad
    )
    if not options.cached:
        eval_mode_prefix(model)
    trainer.train()
    named = dict(trainer.model.named_parameters())
    stats = getattr(trainer, "feature_cache_stats", None)
    mine = {
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "parallel_mode": str(trainer.args.parallel_mode),
        "stage": trainer.freeze_plan.stage,
        "checksums": {n: digest(p) for n, p in named.items()},
        "params": {n: p.detach().reshape(-1).tolist() for n, p in named.items()},
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "eval_losses": [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h],
        "cache": None if stats is None else {**stats.__dict__},
        "patched_left": sum("forward" in m.__dict__ for m in trainer.model.modules()),
    }
    gather_and_end(options.result, mine)


if __name__ == "__main__":
    main()
