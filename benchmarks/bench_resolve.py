"""Time to resolve a freeze plan for a model with 100,000 parameter tensors.

The model is built on the meta device (shapes only, no memory): an embedding, a ``ModuleList`` of
25,000 tiny blocks of two ``nn.Linear`` (4 tensors each) and a head, so 100,004 tensors. The spec
uses every kind of rule (embeddings, a layer range, a freeze and an unfreeze pattern). Besides the
time of resolving, a profile lists the hf_freeze functions it spends its time in. CPU time
(``time.process_time``) is reported next to wall time: on a shared machine it moves less.

``--ratio`` measures what the issue targets instead: resolve + apply for a model of 2,000 blocks of 25
small linears (100,000 tensors), half the blocks frozen, against one bare ``list(model.named_parameters())``
pass, side by side in one process. Each round times both (alternating which goes first, after a
``gc.collect()`` so neither pays for the other's garbage) and prints the ratio; the median and the
spread over the rounds come last, then a profile of one more resolve + apply (``--profile 0``: none).
Target: at most 2.5x.

Usage:
    .venv/bin/python benchmarks/bench_resolve.py                 # 100k tensors, 3 repeats
    .venv/bin/python benchmarks/bench_resolve.py --blocks 2500   # 10k tensors
    .venv/bin/python benchmarks/bench_resolve.py --ratio 7       # resolve+apply / bare walk, 7 rounds
"""

from __future__ import annotations

import argparse
import cProfile
import gc
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


class WideBlock(nn.Module):
    """25 small linears (50 tensors) held as attributes, like the projections of a transformer block."""

    def __init__(self) -> None:
        super().__init__()
        for i in range(25):
            self.add_module(f"fc{i}", nn.Linear(4, 4))


class WideModel(nn.Module):
    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(WideBlock() for _ in range(blocks))


def ratio_rounds(model: WideModel, spec: FreezeSpec, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Per round: the ratio of resolve + apply seconds to one ``list(model.named_parameters())``, and both
    times."""

    def resolve_and_apply() -> None:
        spec.resolve(model).apply(model)

    def bare() -> None:
        list(model.named_parameters())

    ratios, bare_seconds, plan_seconds = [], [], []
    for r in range(rounds):
        seconds = {}
        for fn in (bare, resolve_and_apply) if r % 2 == 0 else (resolve_and_apply, bare):
            gc.collect()
            start = time.perf_counter()
            fn()
            seconds[fn] = time.perf_counter() - start
        ratios.append(seconds[resolve_and_apply] / seconds[bare])
        bare_seconds.append(seconds[bare])
        plan_seconds.append(seconds[resolve_and_apply])
        print(
            f"round {r + 1}: bare walk {seconds[bare]:.3f} s, resolve + apply {seconds[resolve_and_apply]:.3f} s, "
            f"ratio {ratios[-1]:.2f}x"
        )
    return ratios, bare_seconds, plan_seconds


def profile_ratio_model(model: WideModel, spec: FreezeSpec, count: int) -> None:
    """Where resolve + apply of the ``--ratio`` model spends its time (one extra call, under cProfile)."""
    profile = cProfile.Profile()
    profile.runcall(lambda: spec.resolve(model).apply(model))
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("tottime").print_stats(r"hf_freeze", count)
    print("\nWhere resolve + apply spends its time (cProfile, own time; profiling slows it down):")
    print("\n".join(line for line in stream.getvalue().splitlines() if "hf_freeze" in line or "ncalls" in line))


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=25_000, help="blocks of 4 tensors each (default 25000)")
    parser.add_argument("--repeats", type=int, default=3, help="calls per measurement (median)")
    parser.add_argument(
        "--profile",
        type=int,
        default=12,
        help="list this many hf_freeze functions (0: none); with --ratio, profiled after the timed rounds",
    )
    parser.add_argument(
        "--ratio",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="measure resolve+apply against a bare named_parameters() pass over this many rounds (100k tensors)",
    )
    args = parser.parse_args()
    if args.ratio:
        with torch.device("meta"):
            wide = WideModel(2_000)
        half = FreezeSpec(freeze_layers=":1000")
        ratios, bare_seconds, plan_seconds = ratio_rounds(wide, half, args.ratio)
        median = statistics.median(ratios)
        print(
            f"resolve + apply / list(model.named_parameters()): median {median:.2f}x, "
            f"spread {min(ratios):.2f}x-{max(ratios):.2f}x over {len(ratios)} rounds "
            f"(target <= 2.5x: {'met' if median <= 2.5 else 'not met'})\n"
            f"median seconds: bare walk {statistics.median(bare_seconds):.3f}, "
            f"resolve + apply {statistics.median(plan_seconds):.3f}; "
            f"{os.cpu_count()} CPUs, 1-min load average {os.getloadavg()[0]:.2f}"
        )
        if args.profile:
            profile_ratio_model(wide, half, args.profile)
        return

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
        print("\n".join(line for line in stream.getvalue().splitlines() if "hf_freeze" in line or "ncalls" in line))


if __name__ == "__main__":
    main()
