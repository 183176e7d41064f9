"""LateGradSync on two CPU processes (plain PyTorch DDP over gloo): layers unfrozen after the wrap.

Replicas stay bitwise identical (sha256 per parameter from both ranks), equal the one-process run on
the same global batches, each layer moves only after its event, and the bytes all-reduced per step
equal the trainable bytes at every stage. The control run without the sync diverges, so the check can
fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "distributed_scripts", "late_sync_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS = {3: 2, 6: 1}

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def run(tmp_path, *flags: str, processes: int = 2) -> list[dict]:
    result = tmp_path / ("ref.json" if "--reference" in flags else "ddp.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    if "--reference" in flags:
        command = [sys.executable, WORKER, "--result", str(result), *flags]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            WORKER,
            "--result",
            str(result),
            *flags,
        ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"rc={done.returncode}; stderr tail:\n{done.stderr[-4000:]}"
    if "--reference" in flags:
        return [json.loads(result.read_text())]
    return [json.loads((tmp_path / f"ddp.json.rank{r}").read_text()) for r in range(processes)]


@pytest.mark.parametrize("flags", [(), ("--clip", "0.5", "--find_unused")], ids=["plain", "clip-find_unused"])
def test_late_parameters_are_averaged_like_ddp(tmp_path, flags):
    ranks = run(tmp_path, *flags)
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["rank"] for r in ranks} == {0, 1}
    assert ranks[0]["checksums"] == ranks[1]["checksums"], "replicas differ after the unfreezing events"
    assert all(r["hooks_left"] == 0 for r in ranks)
    (reference,) = run(tmp_path, "--reference", *flags)
    for name, values in reference["params"].items():
        torch.testing.assert_close(torch.tensor(ranks[0]["params"][name]), torch.tensor(values), rtol=1e-5, atol=1e-6)

    steps = ranks[0]["per_step"]
    for layer, event in ((2, 3), (1, 6)):  # bitwise still until the step after its event, moving after
        frozen_until = [s[str(layer)] for s in steps[:event]]
        assert len(set(frozen_until)) == 1, f"layer {layer} moved before its event"
        assert steps[event][str(layer)] != frozen_until[-1], f"layer {layer} did not train after its event"
    assert len({s["0"] for s in steps}) == 1, "layer 0 is never unfrozen and must stay bitwise equal"

    for traffic in ranks[0]["traffic"]:  # all-reduce bytes per step follow the trainable set
        assert traffic["ddp"] + traffic["late"] == traffic["trainable"], traffic
    assert ranks[0]["traffic"][-1]["late"] > 0 and ranks[0]["traffic"][0]["late"] == 0


def test_without_the_sync_replicas_diverge(tmp_path):
    ranks = run(tmp_path, "--no_sync")
    assert ranks[0]["checksums"] != ranks[1]["checksums"]
