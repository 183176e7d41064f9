"""All-reduce bytes per optimizer step while layers are unfrozen under DDP (two CPU processes, gloo).

Runs the worker of tests/test_late_grad_sync.py (plain PyTorch DDP, two unfreezing events after the
wrap) and prints, per step: the bytes DDP's own buckets sent (counted by a communication hook), the
bytes LateGradSync sent for the late parameters, their sum beside the trainable-parameter bytes, and,
as the reference, what making every parameter trainable at wrap time would send.

    python benchmarks/bench_unfreeze_traffic.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_scripts", "late_sync_worker.py")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "traffic.json")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            WORKER,
            "--result",
            result,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
        with open(f"{result}.rank0") as handle:
            rank0 = json.load(handle)
    print("| step | DDP buckets | late (LateGradSync) | sent | trainable bytes | all trainable at wrap |")
    print("|---:|---:|---:|---:|---:|---:|")
    for step, t in enumerate(rank0["traffic"], start=1):
        sent = t["ddp"] + t["late"]
        print(f"| {step} | {t['ddp']:,} | {t['late']:,} | {sent:,} | {t['trainable']:,} | {rank0['all_bytes']:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
