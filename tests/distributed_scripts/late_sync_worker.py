"""Worker for tests/test_late_grad_sync.py: plain PyTorch DDP (gloo, CPU) with layers unfrozen mid-run.

Run by ``torchrun --standalone --nproc_per_node 2``. Each rank trains on its own half of every global
batch; two unfreezing events add layers after the wrap. Writes per-rank JSON: sha256 of every
parameter at the end, per-step hashes per layer, the all-reduce bytes per step (DDP's buckets through
a communication hook, plus LateGradSync's own collective), and the trainable bytes at each step.
With ``--reference`` (one process) it trains the same global batches without DDP.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from worker_end import end_cleanly

from hf_freeze.training.late_grad_sync import LateGradSync

LAYERS, WIDTH, STEPS, ACCUM, MICRO = 4, 16, 9, 2, 4
EVENTS = {3: 2, 6: 1}  # after optimizer step 3 layer 2 trains, after step 6 layer 1 too


def build() -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [nn.Linear(8, WIDTH)] + [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(LAYERS)]
    return nn.Sequential(*blocks, nn.Linear(WIDTH, 2))


def layer_params(model: nn.Sequential, index: int) -> list[tuple[str, nn.Parameter]]:
    prefix = f"{index + 1}."
    return [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


def data(step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global micro-batch (2 * MICRO rows) of a step; rank r takes rows [r * MICRO, (r + 1) * MICRO)."""
    gen = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randn(2 * MICRO, 8, generator=gen), torch.randint(0, 2, (2 * MICRO,), generator=gen)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--no_sync", action="store_true", help="leave late parameters unsynchronised (control)")
    parser.add_argument("--clip", type=float, default=0.0)
    parser.add_argument("--find_unused", action="store_true")
    args = parser.parse_args()

    model = build()
    for index in range(LAYERS - 1):  # layers 0..2 start frozen; layer 3, the stem and the head train
        for _, param in layer_params(model, index):
            param.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)

    if args.reference:
        rank, world, wrapped, rows = 0, 1, model, slice(None)
    else:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        wrapped = DistributedDataParallel(model, find_unused_parameters=args.find_unused)
        rows = slice(rank * MICRO, (rank + 1) * MICRO)
    ddp_bytes = [0]
    if not args.reference:

        def counting_hook(state, bucket):
            ddp_bytes[0] += bucket.buffer().numel() * bucket.buffer().element_size()
            return default_hooks.allreduce_hook(state, bucket)

        wrapped.register_comm_hook(None, counting_hook)

    syncing = {"now": False}
    sync = LateGradSync(should_sync=lambda: syncing["now"])
    per_step, traffic = [], []
    for step in range(1, STEPS + 1):
        ddp_bytes[0], sent_before = 0, sync.bytes_sent
        for micro in range(ACCUM):
            x, y = data(step, micro)
            syncing["now"] = micro == ACCUM - 1
            skip_sync = contextlib.nullcontext() if args.reference or syncing["now"] else wrapped.no_sync()
            with skip_sync:  # DDP reads no_sync in the forward, so it wraps forward and backward
                loss = nn.functional.cross_entropy(wrapped(x[rows]), y[rows]) / ACCUM
                loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        optimizer.zero_grad()
        trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        traffic.append({"ddp": ddp_bytes[0], "late": sync.bytes_sent - sent_before, "trainable": trainable_bytes})
        per_step.append(
            {str(i): digest(torch.cat([p.reshape(-1) for _, p in layer_params(model, i)])) for i in range(LAYERS)}
        )
        if step in EVENTS:  # at a step boundary, never inside an accumulation cycle
            named = layer_params(model, EVENTS[step])
            for _, param in named:
                param.requires_grad_(True)
            optimizer.add_param_group({"params": [p for _, p in named]})
            if not args.reference and not args.no_sync:
                sync.add(model.named_parameters(), [n for n, _ in named])
    sync.remove()
    result = {
        "rank": rank,
        "world_size": world,
        "checksums": {n: digest(p) for n, p in model.named_parameters()},
        "params": {n: p.detach().reshape(-1).tolist() for n, p in model.named_parameters()},
        "per_step": per_step,
        "traffic": traffic,
        "hooks_left": len(sync._handles),
        "all_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }
    path = args.result if args.reference else f"{args.result}.rank{rank}"
    with open(path, "w") as handle:
        json.dump(result, handle)
    end_cleanly()


if __name__ == "__main__":
    main()
