"""Frozen-prefix feature caching under DDP: two CPU processes (gloo), shuffled shards, dynamic padding.

Each rank caches what it sees; the cached run equals the uncached DDP run whose frozen prefix runs in eval
mode (logged losses, eval losses, every parameter), the replicas stay sha256-identical, and every rank
skips its prefix on batches it has seen. With gradual unfreezing into the prefix (LateGradSync averaging
the late-unfrozen layers) the same holds.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from launch import accelerate_launch

WORKER = os.path.join(os.path.dirname(__file__), "distributed_scripts", "feature_cache_ddp.py")

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def run(tmp_path, name: str, *flags: str) -> list[dict]:
    result = tmp_path / name / "result.json"
    result.parent.mkdir()
    accelerate_launch(WORKER, "--result", str(result), *flags, timeout=420)
    ranks = json.loads(result.read_text())
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["rank"] for r in ranks} == {0, 1}
    assert all(r["parallel_mode"].endswith("DISTRIBUTED") for r in ranks), ranks[0]["parallel_mode"]
    assert ranks[0]["checksums"] == ranks[1]["checksums"], f"{name}: replicas differ"
    return ranks


@pytest.mark.parametrize("unfreeze", [False, True], ids=["static", "unfreezing"])
def test_cached_ddp_run_equals_the_uncached_ddp_run(tmp_path, unfreeze):
    flags = ("--unfreeze",) if unfreeze else ()
    cached = run(tmp_path, "cached", "--cached", *flags)
    plain = run(tmp_path, "plain", *flags)
    for rank in cached:
        stats = rank["cache"]
        assert stats["prefix_skips"] > 0 and stats["hits"] > 0, f"rank {rank['rank']} never hit: {stats}"
        assert rank["patched_left"] == 0
        assert rank["stage"] == (4 if unfreeze else 0)  # layers 2, 1, 0, then the embeddings
    ours, reference = cached[0], plain[0]
    assert len(ours["losses"]) == len(reference["losses"]) > 0
    torch.testing.assert_close(torch.tensor(ours["losses"]), torch.tensor(reference["losses"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor(ours["eval_losses"]), torch.tensor(reference["eval_losses"]), rtol=1e-5, atol=1e-6
    )
    for name, values in reference["params"].items():
        torch.testing.assert_close(
            torch.tensor(ours["params"][name]),
            torch.tensor(values),
            rtol=1e-5,
            atol=1e-6,
            msg=lambda m, n=name: f"{n}: {m}",
        )
