"""save_only_trainable under DDP on two CPU processes: the main process writes, both resume bitwise."""

from __future__ import annotations

import json
import os

import pytest
from launch import accelerate_launch, skip_cpu_ddp_resume_on_4x

WORKER = os.path.join(os.path.dirname(__file__), "ddp_partial_checkpoint_worker.py")

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@skip_cpu_ddp_resume_on_4x
def test_ddp_partial_checkpoint_save_and_resume(tmp_path):
    result = tmp_path / "result.json"
    accelerate_launch(WORKER, "--output_dir", str(tmp_path / "out"), "--result", str(result), timeout=300)
    ranks = json.loads(result.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["parallel_mode"].endswith("DISTRIBUTED"), rank
        assert "trainable_state.safetensors" in rank["files"] and "model.safetensors" not in rank["files"]
        assert not any(".tmp-" in f for f in rank["files"]), rank["files"]  # one writer, nothing half-written
        assert rank["step"] == 6 and rank["resumed"] == rank["full"], f"rank {rank['rank']} resumed elsewhere"
    assert ranks[0]["full"] == ranks[1]["full"], "replicas differ across ranks"
