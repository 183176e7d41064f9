"""Faults: a training process killed with SIGKILL resumes from its last complete checkpoint and ends
bitwise equal to an uninterrupted run; a half-written checkpoint is never taken as the last one.

The worker (``tests/fault_scripts/train_worker.py``) stops itself at the chosen point and waits, and
the test kills it there with SIGKILL, so the kill points are exact (no timing race) and seeded:
``random.Random(SEED)`` picks the steps. Every subprocess is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers.trainer_utils import get_last_checkpoint

from hf_freeze.core.partial_checkpoint import MANIFEST_FILE, STATE_FILE
from hf_freeze.training.resume import last_complete_checkpoint

pytestmark = pytest.mark.slow

WORKER = Path(__file__).resolve().parent / "fault_scripts" / "train_worker.py"
SEED = 15
MAX_STEPS, SAVE_STEPS = 8, 2
TIMEOUT = 240


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_worker(out: Path, result: Path, *extra: str) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            str(WORKER),
            "--output_dir",
            str(out),
            "--result",
            str(result),
            "--max_steps",
            str(MAX_STEPS),
            "--save_steps",
            str(SAVE_STEPS),
            *extra,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(Path(str(result) + ".json").read_text())


def kill_at(out: Path, tmp: Path, *point: str, flags: tuple[str, ...] = ()) -> None:
    """Start a run that stops at ``point``, SIGKILL it there, wait for it to be gone."""
    marker = tmp / f"reached-{time.monotonic_ns()}"
    process = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "--output_dir",
            str(out),
            "--result",
            str(tmp / "unused.pt"),
            "--max_steps",
            str(MAX_STEPS),
            "--save_steps",
            str(SAVE_STEPS),
            "--resume",
            *point,
            "--marker",
            str(marker),
            *flags,
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(f"the worker ended before {point}: {process.stderr.read()[-3000:]}")
            assert time.monotonic() < deadline, f"the worker did not reach {point} in {TIMEOUT} s"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [n for n in a if not torch.equal(a[n], b[n])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    info = run_worker(tmp / "out", tmp / "final.pt")
    assert info["global_step"] == MAX_STEPS
    return weights(tmp / "final.pt")


def test_sigkill_between_steps_resumes_bitwise(reference, tmp_path):
    """Two kills at seeded random steps of one run; each resume starts from the last complete checkpoint."""
    first, second = sorted(random.Random(SEED).sample(range(SAVE_STEPS + 1, MAX_STEPS), 2))
    out = tmp_path / "out"
    kill_at(out, tmp_path, "--hang_after_step", str(first))
    # a step's checkpoint is written after on_step_end: the last complete one is the previous multiple
    expected = (first - 1) // SAVE_STEPS * SAVE_STEPS
    assert get_last_checkpoint(str(out)) == str(out / f"checkpoint-{expected}")
    kill_at(out, tmp_path, "--hang_after_step", str(second))
    info = run_worker(out, tmp_path / "final.pt", "--resume")
    assert info["global_step"] == MAX_STEPS
    assert info["resumed_from"] == str(out / f"checkpoint-{(second - 1) // SAVE_STEPS * SAVE_STEPS}")
    assert_bitwise_equal(weights(tmp_path / "final.pt"), reference)


@pytest.fixture(scope="module")
def killed_mid_write(tmp_path_factory) -> tuple[Path, int]:
    """A run killed while it wrote checkpoint-K (seeded K and phase); checkpoint-(K-2) is complete."""
    rng = random.Random(SEED + 1)
    step = rng.choice(range(2 * SAVE_STEPS, MAX_STEPS, SAVE_STEPS))
    phase = rng.choice(["before_optimizer", "mid_optimizer"])
    tmp = tmp_path_factory.mktemp("killed_mid_write")
    out = tmp / "out"
    kill_at(out, tmp, "--hang_in_save", f"{step}:{phase}")
    half = out / f"checkpoint-{step}"
    assert half.is_dir() and (half / "freeze_plan.json").is_file() and not (half / "trainer_state.json").exists()
    return out, step


def test_resume_from_the_last_complete_checkpoint_after_a_kill_mid_write(killed_mid_write, reference, tmp_path):
    out, step = killed_mid_write
    work = tmp_path / "out"
    shutil.copytree(out, work)  # keep the fixture's folder for the other test
    info = run_worker(work, tmp_path / "final.pt", "--resume_from", str(work / f"checkpoint-{step - SAVE_STEPS}"))
    assert info["global_step"] == MAX_STEPS
    assert_bitwise_equal(weights(tmp_path / "final.pt"), reference)


def test_a_half_written_checkpoint_is_never_taken_as_the_last_one(killed_mid_write, reference, tmp_path):
    out, step = killed_mid_write
    work = tmp_path / "out"
    shutil.copytree(out, work)
    try:
        info = run_worker(work, tmp_path / "final.pt", "--resume")
    except AssertionError as err:  # the resume crashed on the half-written checkpoint
        raise AssertionError(f"resume with resume_from_checkpoint=True failed: {err}") from None
    assert info["global_step"] == MAX_STEPS
    assert_bitwise_equal(weights(tmp_path / "final.pt"), reference)


# ---------------------------------------------------------------- partial checkpoints (save_only_trainable)
PARTIAL = ("--save_only_trainable",)


@pytest.fixture(scope="module")
def partial_reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    tmp = tmp_path_factory.mktemp("uninterrupted_partial")
    info = run_worker(tmp / "out", tmp / "final.pt", *PARTIAL)
    assert info["global_step"] == MAX_STEPS
    checkpoint = tmp / "out" / f"checkpoint-{MAX_STEPS}"
    assert (checkpoint / MANIFEST_FILE).is_file() and not (checkpoint / "model.safetensors").exists()
    return weights(tmp / "final.pt")


def test_partial_checkpoints_change_what_is_written_not_what_trains(partial_reference, reference):
    assert_bitwise_equal(partial_reference, reference)


def test_sigkills_while_writing_partial_checkpoints_and_between_steps_resume_bitwise(partial_reference, tmp_path):
    """Three kills in one run with save_only_trainable: inside the partial write of checkpoint-4 and of
    checkpoint-6 (the two phases in a seeded order: half of trainable_state.safetensors under its temporary
    name; the state file in place but not its manifest), then between steps 6 and 7. Every resume with
    resume_from_checkpoint=True skips the half-written folder, and the run ends bitwise equal."""
    phases = ["mid_state", "before_manifest"]
    random.Random(SEED + 2).shuffle(phases)
    out = tmp_path / "out"
    for step, phase in zip((2 * SAVE_STEPS, 3 * SAVE_STEPS), phases):
        kill_at(out, tmp_path, "--hang_in_save", f"{step}:{phase}", flags=PARTIAL)
        half = out / f"checkpoint-{step}"
        assert half.is_dir() and not (half / MANIFEST_FILE).exists() and not (half / "trainer_state.json").exists()
        assert (half / STATE_FILE).is_file() == (phase == "before_manifest")
        assert last_complete_checkpoint(str(out)) == str(out / f"checkpoint-{step - SAVE_STEPS}")
    kill_at(out, tmp_path, "--hang_after_step", str(3 * SAVE_STEPS + 1), flags=PARTIAL)
    last = out / f"checkpoint-{3 * SAVE_STEPS}"
    assert last_complete_checkpoint(str(out)) == str(last) and (last / MANIFEST_FILE).is_file()
    info = run_worker(out, tmp_path / "final.pt", "--resume", *PARTIAL)
    assert info["global_step"] == MAX_STEPS
    assert_bitwise_equal(weights(tmp_path / "final.pt"), partial_reference)
    assert not list(out.glob("checkpoint-*/*.tmp-*")), "a killed write's temporary file outlived the rewrite"


# ---------------------------------------------------------------- frozen-feature caching (cache_frozen_features)
@pytest.fixture(scope="module")
def cached_reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    tmp = tmp_path_factory.mktemp("uninterrupted_cached")
    info = run_worker(tmp / "out", tmp / "final.pt", "--cache_dir", str(tmp / "cache"))
    assert info["global_step"] == MAX_STEPS
    assert info["cache"]["prefix_skips"] > 0 and info["cache"]["disk_bytes"] > 0  # hits, all spilled to disk
    return weights(tmp / "final.pt")


def test_sigkill_with_the_feature_cache_leaves_no_spill_file_and_resumes_bitwise(cached_reference, tmp_path):
    """A cached run (every feature spilled to disk) killed between steps at a seeded step leaves nothing in
    the cache folder; the resumed run refills the cache and ends bitwise equal to the uninterrupted one."""
    step = random.Random(SEED + 3).choice(range(SAVE_STEPS + 2, MAX_STEPS))
    out, cache = tmp_path / "out", tmp_path / "cache"
    kill_at(out, tmp_path, "--hang_after_step", str(step), flags=("--cache_dir", str(cache)))
    assert cache.is_dir() and not list(cache.iterdir()), "a killed run left its spill file behind"
    info = run_worker(out, tmp_path / "final.pt", "--resume", "--cache_dir", str(cache))
    assert info["global_step"] == MAX_STEPS and info["cache"]["prefix_skips"] > 0
    assert_bitwise_equal(weights(tmp_path / "final.pt"), cached_reference)
    assert not list(cache.iterdir())
