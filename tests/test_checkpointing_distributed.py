"""save_only_trainable under DDP on two CPU processes: the main process writes, both resume bitwise."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "ddp_partial_checkpoint_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_partial_checkpoint_save_and_resume(tmp_path):
    result = tmp_path / "result.json"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        WORKER,
        "--output_dir",
        str(tmp_path / "out"),
        "--result",
        str(result),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"launch timed out; stderr tail:\n{(err.stderr or b'')[-4000:]}")
    assert done.returncode == 0 and result.exists(), f"launch failed (rc={done.returncode}):\n{done.stderr[-6000:]}"
    ranks = json.loads(result.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["parallel_mode"].endswith("DISTRIBUTED"), rank
        assert "trainable_state.safetensors" in rank["files"] and "model.safetensors" not in rank["files"]
        assert not any(".tmp-" in f for f in rank["files"]), rank["files"]  # one writer, nothing half-written
        assert rank["step"] == 6 and rank["resumed"] == rank["full"], f"rank {rank['rank']} resumed elsewhere"
    assert ranks[0]["full"] == ranks[1]["full"], "replicas differ across ranks"
