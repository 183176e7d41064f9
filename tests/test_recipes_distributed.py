"""The text-classification recipe under ``accelerate launch``: two CPU processes, and two "machines" on loopback.

Every launch is a subprocess with a timeout whose failure shows the workers' output. The recipe
runs through ``distributed_scripts/run_recipe.py``, which hands it the checksum recorder of
``instrumentation.py``: each rank writes per-parameter checksums before and after training, so the
tests compare replicas bitwise, check that frozen parameters never changed, and that the world
size really was 2 (a launch that forgets ``--use_cpu`` runs two separate trainings that look alike).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from instrumentation import ChecksumRecorder
from test_recipes import QUICK, ROOT, load_recipe, make_tiny_text_model

from hf_freeze import FreezePlan

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

LAUNCH_TIMEOUT = 300
RUN_RECIPE = os.path.join(ROOT, "tests", "distributed_scripts", "run_recipe.py")
SLICE = ["--max_train_samples", "48", "--max_eval_samples", "16", "--max_steps", "3", "--seed", "7"]


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory) -> str:
    return make_tiny_text_model(str(tmp_path_factory.mktemp("tiny_bert")))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(launch_args: list[str], recipe_args: list[str], checksums: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launch_args,
        RUN_RECIPE,
        "--checksums",
        checksums,
        os.path.join(ROOT, "recipes", "text_classification.py"),
        *recipe_args,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def wait_ok(process: subprocess.Popen, what: str) -> str:
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"{what} did not finish in {LAUNCH_TIMEOUT}s; output tail:\n{output[-4000:]}")
    assert process.returncode == 0, f"{what} exited with {process.returncode}; output tail:\n{output[-4000:]}"
    return output


def read_ranks(directory: str) -> list[dict]:
    records = []
    for rank in (0, 1):
        with open(os.path.join(directory, f"rank-{rank}.json"), encoding="utf-8") as handle:
            records.append(json.load(handle))
    return records


def losses(record: dict) -> list[float]:
    return [entry["loss"] for entry in record["log_history"] if "loss" in entry]


def assert_identical_replicas(records: list[dict], plan: FreezePlan) -> None:
    for record in records:
        assert record["world_size"] == 2 and record["num_processes"] == 2, record["parallel_mode"]
        assert record["parallel_mode"] == "ParallelMode.DISTRIBUTED"
    first, second = records
    assert first["initial"] == second["initial"], "ranks started from different weights (seeding)"
    differing = [name for name in first["final"] if first["final"][name] != second["final"][name]]
    assert not differing, f"replicas differ after training: {differing[:5]}"
    for name in plan.frozen_names:
        assert first["final"][name] == first["initial"][name], f"frozen {name} changed"
    assert any(first["final"][n] != first["initial"][n] for n in plan.trainable_names), "nothing trained"


def test_cpu_ddp_two_processes_match_single_process(tmp_path, tiny_text_model):
    """cpu_ddp.yaml, 2 x batch 4 vs 1 x batch 8: same replicas, frozen untouched, same logged loss."""
    common = [
        "--model_name_or_path",
        tiny_text_model,
        "--freeze_embeddings",
        "--freeze_layers",
        ":2",
        *SLICE,
        *QUICK[2:],
    ]
    launch = accelerate_launch(
        [
            "--config_file",
            os.path.join(ROOT, "accelerate_configs", "cpu_ddp.yaml"),
            "--main_process_port",
            str(free_port()),
        ],
        [*common, "--use_cpu", "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "ddp")],
        str(tmp_path / "ddp_sums"),
    )
    # The single-process reference runs here while the launch imports (global batch 8 in both).
    load_recipe("text_classification").main(
        [*common, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "single")],
        callbacks=[ChecksumRecorder(str(tmp_path / "single_sums"))],
    )
    wait_ok(launch, "accelerate launch cpu_ddp.yaml")

    plan = FreezePlan.load(str(tmp_path / "ddp"))
    records = read_ranks(str(tmp_path / "ddp_sums"))
    assert_identical_replicas(records, plan)
    with open(tmp_path / "single_sums" / "rank-0.json", encoding="utf-8") as handle:
        single = json.load(handle)
    assert single["world_size"] == 1 and single["initial"] == records[0]["initial"]
    # transformers 5.24 would log (and train on) num_processes x the loss for BERT; the recipe turns that off.
    assert records[0]["accepts_loss_kwargs"] is False
    ddp_losses, single_losses = losses(records[0]), losses(single)
    assert len(ddp_losses) == len(single_losses) == 3
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4, abs=1e-5)


def test_multi_node_on_loopback_trains_identical_replicas(tmp_path, tiny_text_model):
    """multi_node.yaml launched twice (machine rank 0 and 1, one process each) on 127.0.0.1."""
    port = str(free_port())
    sums = str(tmp_path / "sums")
    launches = []
    for rank in (0, 1):
        launches.append(
            accelerate_launch(
                [
                    "--config_file",
                    os.path.join(ROOT, "accelerate_configs", "multi_node.yaml"),
                    "--num_machines",
                    "2",
                    "--num_processes",
                    "2",
                    "--machine_rank",
                    str(rank),
                    "--main_process_ip",
                    "127.0.0.1",
                    "--main_process_port",
                    port,
                    "--mixed_precision",
                    "no",
                ],
                [
                    "--model_name_or_path",
                    tiny_text_model,
                    "--freeze_embeddings",
                    "--freeze_layers",
                    ":2",
                    *SLICE,
                    *QUICK[2:],
                    "--use_cpu",
                    "--per_device_train_batch_size",
                    "4",
                    "--output_dir",
                    str(tmp_path / f"out{rank}"),
                ],
                sums,
            )
        )
    try:
        outputs = [wait_ok(process, f"machine rank {rank}") for rank, process in enumerate(launches)]
    finally:
        for process in launches:
            if process.poll() is None:
                process.kill()
    assert "== hf-freeze text_classification: done ==" in outputs[0]
    plan = FreezePlan.load(str(tmp_path / "out0"))
    assert_identical_replicas(read_ranks(sums), plan)
