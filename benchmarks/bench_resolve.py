"""Time to resolve a freeze plan for a model with 100,000 parameter tensors.

The model is built on the meta device (shapes only, no memory): an embedding, a ``ModuleList`` of
25,000 tiny blocks of two ``nn.Linear`` (4 tensors each) and a head, so 100,004 tensors. The spec
uses every kind of rule (embeddings, a layer range, a freeze and an unfreeze pattern). Besides the
time of resolving, a profile lists the hf_freeze functions it spends its time in. CPU time
(``time.process_time``) is reported next to wall time: on a shared machine it moves less.

Usage:
    .venv/bin/python benchmarks/bench_resolve.py                 # 100k tensors, 3 repeats
    .venv/bin/python benchmarks/bench_resolve.py --blocks 2500   # 10k tensors
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from hf_freeze import FreezeSpec


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(4, 4)
        self.mlp = nn.Linear(4, 4)


class ManyBlocks(nn.Module):
    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(16, 4)
        self.layers = nn.ModuleList(Block() for _ in range(blocks))
        self.head = nn.Linear(4, 2)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn`` over ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=25_000, help="blocks of 4 tensors each (default 25000)")
    parser.add_argument("--repeats", type=int, default=3, help="calls per measurement (median)")
    parser.add_argument(
        "--profile", type=int, default=12, help="list this many hf_freeze functions (0: none)"
    )
    args = parser.parse_args()

    with torch.device("meta"):
        model = ManyBlocks(args.blocks)
    tensors = sum(1 for _ in model.parameters())
    last = args.blocks - 1
    spec = FreezeSpec(
        freeze_embeddings=True,
        freeze_layers=f":{args.blocks * 4 // 5}",
        freeze=[r"layers\.\d*7\.attn"],
        unfreeze=[f"layers.{last}.mlp"],
    )
    plan = spec.resolve(model)
    stages = [
        ("FreezeSpec.resolve", lambda: spec.resolve(model)),
        ("for reference: list(model.named_parameters())", lambda: list(model.named_parameters())),
        ("FreezePlan.table", plan.table),
        ("FreezePlan.to_json", plan.to_json),
    ]
    print(f"model: {tensors:,} parameter tensors on the meta device; {plan.summary()}")
    print(f"| stage | wall (median of {args.repeats}) | CPU |")
    print("|---|---|---|")
    for label, fn in stages:
        wall, cpu = timed(fn, args.repeats)
        print(f"| {label} | {wall:.3f} s | {cpu:.3f} s |")
    print(f"({os.cpu_count()} CPUs, 1-min load average {os.getloadavg()[0]:.2f})")
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(spec.resolve, model)
        stream = io.StringIO()
        stats = pstats.Stats(profile, stream=stream).sort_stats("cumulative")
        stats.print_stats(r"hf_freeze", args.profile)
        print("\nWhere resolve spends its time (cProfile, cumulative; profiling slows it down):")
        print(
            "\n".join(
                line for line in stream.getvalue().splitlines() if "hf_freeze" in line or "ncalls" in line
            )
        )


if __name__ == "__main__":
    main()
