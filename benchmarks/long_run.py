"""Long run: thousands of steps of a tiny model with repeated evaluation, checkpointing, resume and
gradual-unfreezing events, checking that resident memory stays flat and nothing is left behind.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/long_run.py               # 10,000 steps, about 3-6 min, 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/long_run.py --steps 3000  # about 1-2 min

One process. A 4-layer BERT classifier (hidden size 16) starts with its embeddings and all layers
frozen; FreezingTrainer unfreezes one layer every ``steps/6`` steps (then the embeddings), evaluates
every ``--eval_every`` steps, saves a checkpoint every ``--save_every`` steps (keeping 2), and the
run is cut in ``--segments`` (4) ``train()`` segments: each segment is a new FreezingTrainer resumed with
``resume_from_checkpoint=True`` from the previous one's last checkpoint (the previous trainer is
deleted). It reports:

- the RSS slope in MiB per 1,000 steps (least squares over samples every 50 steps, the first
  segment's first 20% left out as warm-up), overall and per segment;
- before/after counts: hooks on the model's modules and parameters, live optimizers and trainers,
  param groups of the live optimizer, open file descriptors, threads.

``--save_only_trainable`` runs the same with partial checkpoints (each segment then resumes from one);
``--cache_frozen_features`` with the frozen-prefix feature cache (every unfreezing event reaches into
the cached prefix and shortens it; each segment reports its cache counters).

Results go to stdout and ``benchmarks/results/long_run.json``. This is not part of the test suite
(it takes minutes); docs/reliability.md shows its figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
import warnings

import torch
import transformers as tf
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_freeze import FreezingTrainer, FreezingTrainingArguments  # noqa: E402

MIB = 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def folder_bytes(folder: str) -> dict[str, int]:
    return {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


def model_hooks(model: torch.nn.Module) -> int:
    count = 0
    for module in model.modules():
        for name in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
            "_load_state_dict_post_hooks",
        ):
            count += len(getattr(module, name, {}) or {})
    for param in model.parameters():
        count += len(param._backward_hooks or {}) if getattr(param, "_backward_hooks", None) else 0
        count += len(getattr(param, "_post_accumulate_grad_hooks", None) or {})
    return count


def live(cls: type) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on some lazy objects warns
        return sum(1 for obj in gc.get_objects() if isinstance(obj, cls))


def counts(model: torch.nn.Module, trainer: FreezingTrainer | None) -> dict[str, int]:
    gc.collect()
    return {
        "model_hooks": model_hooks(model),
        "live_optimizers": live(torch.optim.Optimizer),
        "live_trainers": live(tf.Trainer),
        "param_groups": len(trainer.optimizer.param_groups) if trainer is not None and trainer.optimizer else 0,
        "open_fds": open_fds(),
        "threads": threading.active_count(),
        "thread_names": sorted(t.name for t in threading.enumerate()),
    }


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 99, (n, 16), generator=g)
        self.y = (self.x[:, 0] > 49).long()  # learnable, so the losses mean something

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


class Probe(TrainerCallback):
    """Samples RSS every ``every`` steps and stops the segment at ``stop_at``."""

    def __init__(self, samples: list, every: int, stop_at: int, segment: int):
        self.samples, self.every, self.stop_at, self.segment = samples, every, stop_at, segment

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.samples.append((state.global_step, rss_bytes(), self.segment))
        if state.global_step >= self.stop_at:
            control.should_save = True
            control.should_training_stop = True


def slope_per_1000(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS (MiB) against steps, per 1,000 steps."""
    if len(points) < 3:
        return float("nan")
    xs = [p[0] for p in points]
    ys = [p[1] / MIB for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--save_every", type=int, default=250)
    parser.add_argument("--sample_every", type=int, default=50)
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument(
        "--save_only_trainable",
        action="store_true",
        help="partial checkpoints (only what trains, plus the fingerprint of the frozen weights)",
    )
    parser.add_argument(
        "--cache_frozen_features",
        action="store_true",
        help="the frozen-prefix feature cache (followed through every unfreezing event)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: a hidden-16 model gains nothing from more, and on a shared "
        "2-core machine two OpenMP threads spin-wait on each other, making each step about 100x slower)",
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "long_run.json"))
    cli = parser.parse_args()

    started = time.time()
    torch.set_num_threads(cli.threads)
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=99,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = tf.BertForSequenceClassification(config)
    before = counts(model, None)
    rss_start = rss_bytes()
    samples: list[tuple[int, int, int]] = []
    events = []
    with tempfile.TemporaryDirectory() as out:
        args = FreezingTrainingArguments(
            out,
            freeze_embeddings=True,
            freeze_layers="all",
            unfreeze_strategy="steps",
            unfreeze_steps=max(1, cli.steps // 6),
            layer_lr_decay=0.9,
            save_only_trainable=cli.save_only_trainable,
            cache_frozen_features=cli.cache_frozen_features,
            max_steps=cli.steps,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=32,
            learning_rate=1e-3,
            lr_scheduler_type="linear",
            eval_strategy="steps",
            eval_steps=cli.eval_every,
            save_strategy="steps",
            save_steps=cli.save_every,
            save_total_limit=2,
            logging_steps=cli.eval_every,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=42,
        )
        train, evaluate = TokenData(512, 1), TokenData(64, 2)
        trainer = None
        for segment in range(cli.segments):
            stop_at = cli.steps * (segment + 1) // cli.segments
            # A resume normally starts from a freshly loaded model. This one reuses the model object, with
            # the flags the previous trainer left (so a leak on it would show, and a plan resolved over an
            # earlier plan must still reach the last unfreezing stage: "stage" below).
            trainer = FreezingTrainer(
                model=model,
                args=args,
                train_dataset=train,
                eval_dataset=evaluate,
                callbacks=[Probe(samples, cli.sample_every, stop_at, segment)],
            )
            trainer.train(resume_from_checkpoint=True if segment else None)
            events.append(
                {
                    "segment": segment,
                    "global_step": trainer.state.global_step,
                    "stage": trainer.freeze_plan.stage,
                    "trainable": trainer.freeze_plan.trainable_numel,
                    **counts(model, trainer),
                    "checkpoints": sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")),
                    "last_checkpoint_bytes": folder_bytes(os.path.join(out, f"checkpoint-{trainer.state.global_step}")),
                    "feature_cache": vars(trainer.feature_cache_stats) if cli.cache_frozen_features else None,
                }
            )
            print(
                f"segment {segment}: step {trainer.state.global_step}, unfreeze stage {trainer.freeze_plan.stage}, "
                f"RSS {rss_bytes() / MIB:.1f} MiB, {events[-1]}",
                flush=True,
            )
            if segment < cli.segments - 1:
                trainer = None
        evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
        stages = (trainer.freeze_plan.stage, len(trainer._unfreezing.events))
        during = counts(model, trainer)
        trainer = None
    after = counts(model, None)

    warm = cli.steps // cli.segments // 5
    steady = [(s, r) for s, r, seg in samples if not (seg == 0 and s < warm)]
    per_segment = {
        seg: slope_per_1000([(s, r) for s, r, g in samples if g == seg and not (g == 0 and s < warm)])
        for seg in range(cli.segments)
    }
    result = {
        "steps": cli.steps,
        "segments": cli.segments,
        "save_only_trainable": cli.save_only_trainable,
        "cache_frozen_features": cli.cache_frozen_features,
        "eval_every": cli.eval_every,
        "save_every": cli.save_every,
        "evaluations": len(evals),
        "unfreeze_stage_reached": stages[0],
        "unfreeze_events": stages[1],
        "first_eval_loss": evals[0] if evals else None,
        "last_eval_loss": evals[-1] if evals else None,
        "rss_start_mib": rss_start / MIB,
        "rss_end_mib": rss_bytes() / MIB,
        "rss_slope_mib_per_1000_steps": slope_per_1000(steady),
        "rss_slope_after_first_segment": slope_per_1000([(s, r) for s, r, g in samples if g > 0]),
        "rss_slope_per_segment": per_segment,
        "counts_before": before,
        "counts_last_segment": during,
        "counts_after": after,
        "segments_detail": events,
        "rss_samples": [{"step": s, "rss_mib": round(r / MIB, 2), "segment": g} for s, r, g in samples],
        "seconds": time.time() - started,
        "torch": torch.__version__,
        "transformers": tf.__version__,
    }
    os.makedirs(os.path.dirname(cli.out), exist_ok=True)
    with open(cli.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k not in ("segments_detail", "rss_samples")}, indent=2))
    left = {k: after[k] - before[k] for k in ("model_hooks", "live_optimizers", "live_trainers", "open_fds")}
    print(f"left behind (after - before): {left}")
    if stages[0] != stages[1]:
        print(f"WARNING: gradual unfreezing reached stage {stages[0]} of {stages[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
