"""FreezingTrainer on two CPU processes (gloo): DDP through ``accelerate launch``, and DeepSpeed ZeRO-2/3
through ``Trainer(deepspeed=...)``. Frozen parameters stay bitwise unchanged on every rank and every
parameter ends identical across ranks (checksums gathered from both)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from launch import accelerate_launch

WORKER = os.path.join(os.path.dirname(__file__), "distributed_scripts", "train_frozen.py")

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed: `pip install -e '.[deepspeed]'` (the `test` extra includes it)",
)


def launch(backend: str, tmp_path, timeout: int) -> list[dict]:
    """Run the worker on 2 processes; return what each rank reported. The workers' output is in any failure."""
    result = tmp_path / "result.json"
    accelerate_launch(
        WORKER, "--backend", backend, "--result", str(result), "--output_dir", str(tmp_path / "out"), timeout=timeout
    )
    return json.loads(result.read_text())


def check(ranks: list[dict]) -> None:
    assert len(ranks) == 2 and {r["rank"] for r in ranks} == {0, 1}
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["parallel_mode"].endswith("DISTRIBUTED"), rank
        assert rank["frozen_count"] > 0 and rank["frozen_unchanged"], f"a frozen parameter moved on rank {rank['rank']}"
        assert "bert.encoder.layer.3.output.dense.weight" in rank["trained_changed"]
        assert not any("layer.1." in n or "embeddings" in n for n in rank["trained_changed"])
    assert ranks[0]["checksums"] == ranks[1]["checksums"], "replicas differ across ranks"


def test_ddp_two_cpu_processes(tmp_path):
    ranks = launch("ddp", tmp_path, timeout=300)
    check(ranks)
    assert not ranks[0]["deepspeed"]
    assert all(r["find_unused_parameters"] is False for r in ranks), "the plan's choice did not reach DDP"
    assert all(r["unfreeze_refused"] == "" for r in ranks)  # gradual unfreezing runs under DDP (test_unfreeze_ddp)


@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_two_cpu_processes(tmp_path, stage):
    # the first DeepSpeed run on a machine compiles a communication extension (35 s idle, minutes when busy)
    ranks = launch(f"zero{stage}", tmp_path, timeout=560)
    check(ranks)
    assert all(r["deepspeed"] for r in ranks)
    # ZeRO's optimizer partitions are fixed at initialize: unfreezing is refused before any step
    assert all("not supported under DeepSpeed" in r["unfreeze_refused"] for r in ranks)
    assert all("one `train()` per stage" in r["unfreeze_refused"] for r in ranks)
    if stage == 3:  # parameters arrive partitioned; the plan counts their real size from ds_numel
        assert all(r["partitioned"] and r["plan_total"] == r["expected_total"] for r in ranks)
