"""Why gradual unfreezing is refused under FSDP, checked with plain PyTorch FSDP2 on two CPU processes.

``Trainer`` cannot run FSDP on CPU, so the decision is tested on ``fully_shard`` directly: a layer
unfrozen after the first forward trains identically on both ranks in fp32, but with a bf16
mixed-precision policy (the usual FSDP setup on GPUs) the next backward fails inside FSDP2
(PyTorch #186998). FreezingTrainer refuses FSDP before training (tests/test_param_groups_and_unfreezing.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "distributed_scripts", "fsdp2_unfreeze.py")

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def run(tmp_path, mode: str) -> list[dict]:
    result = tmp_path / mode
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               WORKER, mode, str(result)]  # fmt: skip
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert done.returncode == 0, f"rc={done.returncode}; stderr tail:\n{done.stderr[-4000:]}"
    return [json.loads((tmp_path / f"{mode}.rank{r}").read_text()) for r in range(2)]


def test_fp32_unfreezing_after_the_wrap_trains_identically_on_both_ranks(tmp_path):
    ranks = run(tmp_path, "fp32")
    assert all(r["ok"] for r in ranks), ranks
    assert ranks[0]["hash"] == ranks[1]["hash"]


def test_mixed_precision_breaks_when_a_layer_is_unfrozen_after_the_first_forward(tmp_path):
    ranks = run(tmp_path, "mp")
    assert not any(r["ok"] for r in ranks)
    assert all("grad_dtype" in r["error"] or "dtype" in r["error"] for r in ranks), ranks
