"""Smoke tests of the benchmark machinery (benchmarks/trainbench) on tiny models.

They check that the harness measures what it claims: gradient and optimizer-state bytes per trainable
parameter, per-case RNG streams and interleaving in the scheduler, paired ratios, target verdicts and the
spread and round count they rest on in the report (a smoke run gives none), and one end-to-end ``--quick``
run of ``run_benchmarks.py``. Timing figures themselves are not tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from trainbench import measure, report  # noqa: E402
from trainbench.alone import measure_alone  # noqa: E402
from trainbench.cases import (  # noqa: E402
    DEPTH_BY_NAME,
    TINY_BERT,
    BenchSettings,
    freeze_by_hand,
    load_model,
    prepare_case,
)
from trainbench.scheduler import StepScheduler  # noqa: E402

TINY = dict(model=TINY_BERT, batch_size=4, seq_len=16, seed=0)


def _trainable_by_hand(depth: str) -> int:
    model = load_model(TINY_BERT, 0)
    freeze_by_hand(model, DEPTH_BY_NAME[depth])
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_gradient_and_optimizer_bytes_count_only_what_exists():
    model = load_model(TINY_BERT, 0)
    freeze_by_hand(model, DEPTH_BY_NAME["top2"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in trainable)
    assert 0 < n_trainable < total
    out = model(input_ids=torch.randint(0, 99, (2, 8)), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert measure.gradient_bytes(model) == 4 * n_trainable
    assert measure.trainable_numel(model) == n_trainable

    optimizer = torch.optim.AdamW(trainable)
    optimizer.step()
    state = measure.optimizer_state_bytes(optimizer)
    assert state["per_parameter"] == 8 * n_trainable
    assert state["other"] == 4 * len(trainable)  # one float32 `step` scalar per tensor

    # An optimizer that was handed every parameter (and gradients for all) is caught by the measure.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    everything = torch.optim.AdamW(model.parameters())
    everything.step()
    assert measure.optimizer_state_bytes(everything)["per_parameter"] == 8 * total
    assert measure.optimizer_numel(everything) == total


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["top2/freezing", "full/lora"])
def test_measure_alone_through_trainer(tmp_path, case_id):
    result = measure_alone(case_id, BenchSettings(steps=2, output_dir=str(tmp_path), **TINY))
    trainable = result["trainable_params"]
    if case_id.startswith("top2/"):
        assert trainable == _trainable_by_hand("top2")
    assert 0 < trainable < result["total_params"]
    assert result["grad_bytes"] == 4 * trainable
    assert result["optimizer_state_bytes"]["per_parameter"] == 8 * trainable
    assert result["optimizer_params"] == trainable  # the optimizer was given trainable parameters only
    assert result["peak_rss_bytes"] >= result["rss_before_bytes"] > 0
    assert len(result["losses"]) == 2


def test_scheduler_interleaves_and_keeps_each_case_rng():
    order: list[str] = []
    draws: dict[str, list[float]] = {"a": [], "b": []}

    def case(name: str, seed: int):
        def run(turn):
            torch.manual_seed(seed)
            for _ in range(4):
                turn.begin()
                order.append(name)
                draws[name].append(torch.rand(1).item())
                assert threading.current_thread().name == name
                turn.end()

        return run

    scheduler = StepScheduler(num_threads=1, timeout_s=60)
    scheduler.add("a", case("a", 1))
    scheduler.add("b", case("b", 2))
    times = scheduler.run(4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(t) for t in times.values()] == [4, 4] and all(t >= 0 for t in times["a"] + times["b"])
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        assert draws[name] == [torch.rand(1).item() for _ in range(4)]


def test_scheduler_reports_a_failing_case():
    def broken(turn):
        turn.begin()
        raise OSError("disk full")

    scheduler = StepScheduler(num_threads=1, timeout_s=60)
    scheduler.add("broken", broken)
    with pytest.raises(RuntimeError, match="broken.*disk full"):
        scheduler.run(2)


@pytest.mark.slow
def test_interleaved_freezing_trainer_matches_hand_frozen_losses(tmp_path):
    settings = BenchSettings(steps=3, output_dir=str(tmp_path), **TINY)
    base = load_model(TINY_BERT, 0)
    scheduler = StepScheduler(num_threads=1, timeout_s=120)
    prepared = {c: prepare_case(c, base, settings) for c in ("top2/trainer", "top2/freezing", "full/trainer")}
    for case_id, case in prepared.items():
        scheduler.add(case_id, lambda turn, case=case: case.run(turn.begin, turn.end))
    scheduler.run(3)
    losses = {c: [float(x) for x in p.losses] for c, p in prepared.items()}
    assert len(losses["top2/trainer"]) == 3
    assert losses["top2/freezing"] == losses["top2/trainer"]
    assert losses["full/trainer"][0] == losses["top2/trainer"][0]  # same start: same model, data, dropout
    assert losses["full/trainer"][1:] != losses["top2/trainer"][1:]  # then the freeze shows
    hand, ours = prepared["top2/trainer"].model, prepared["top2/freezing"].model
    for (name, a), (_, b) in zip(hand.named_parameters(), ours.named_parameters()):
        assert a.requires_grad == b.requires_grad, name
        assert torch.equal(a, b), name


STEP_TIME = "step time within 2% of hand-frozen Trainer"


def _fake_cases(timed_rounds: int = report.MIN_VERDICT_ROUNDS) -> dict:
    reference = [(1.0, 2.0, 1.0)[i % 3] for i in range(timed_rounds)]
    times = {
        "head/trainer": [9.0] + reference,
        "head/freezing": [9.0] + [1.1 * t for t in reference],  # 10% slower in every round
        "head/forward": [9.0] + [0.5 * t for t in reference],
    }
    cases = report.summarize(times, warmup=1)
    sizes = {
        "head/trainer": dict(
            trainable_params=10,
            grad_bytes=40,
            peak_rss_bytes=100 * report.MIB,
            optimizer_state_bytes={"per_parameter": 80, "other": 8, "total": 88},
        ),
        "head/freezing": dict(
            trainable_params=10,
            grad_bytes=80,
            peak_rss_bytes=99 * report.MIB,
            optimizer_state_bytes={"per_parameter": 80, "other": 8, "total": 88},
        ),
        "head/forward": dict(
            trainable_params=0,
            grad_bytes=0,
            peak_rss_bytes=90 * report.MIB,
            optimizer_state_bytes={"per_parameter": 0, "other": 0, "total": 0},
        ),
    }
    for case_id, extra in sizes.items():
        cases[case_id].update(extra, losses=[0.5, 0.4])
    return cases


def test_report_ratios_targets_table_and_chart(tmp_path):
    cases = _fake_cases()
    assert cases["head/trainer"]["median_step_s"] == 1.0
    assert cases["head/freezing"]["ratio_to_reference"] == pytest.approx(1.1)
    assert cases["head/forward"]["ratio_to_reference"] == pytest.approx(0.5)
    assert cases["head/freezing"]["ratio_rounds"] == report.MIN_VERDICT_ROUNDS
    verdicts = {(t["target"], t["depth"]): t["holds"] for t in report.check_targets(cases)}
    assert verdicts[(STEP_TIME, "head")] is False
    assert verdicts[("identical losses", "head")] is True
    assert verdicts[("peak memory at or below hand-frozen Trainer", "head")] is True
    assert verdicts[("gradients = 4 B per trainable parameter", "head/freezing")] is False
    assert verdicts[("optimizer state = 8 B per trainable parameter", "head/trainer")] is True
    cases["head/freezing"]["peak_rss_bytes"] = 105 * report.MIB  # 5 MiB above the reference: a miss
    cases["head/freezing"]["losses"] = [0.5, 0.41]
    verdicts = {(t["target"], t["depth"]): t["holds"] for t in report.check_targets(cases)}
    assert verdicts[("peak memory at or below hand-frozen Trainer", "head")] is False
    assert verdicts[("identical losses", "head")] is False
    cases["head/freezing"]["peak_rss_bytes"] = 99 * report.MIB
    table = report.markdown_table(cases)
    assert "| head only | FreezingTrainer | 1.100 | 1.100 | 99.0 |" in table
    assert len(table.splitlines()) == 2 + 3
    chart = tmp_path / "chart.png"
    report.draw_chart(cases, str(chart), "test")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size < 200_000


def test_a_step_time_verdict_prints_the_spread_it_rests_on():
    times = {case_id: row["step_times_s"] for case_id, row in _fake_cases().items()}
    times["head/freezing"][5] *= 2  # one slow round: the median stays, the spread shows it
    cases = report.summarize(times, warmup=1)
    (step,) = [t for t in report.check_targets(cases) if t["target"] == STEP_TIME]
    assert step["holds"] is False and step["verdict"] == "does not hold"
    rounds = report.MIN_VERDICT_ROUNDS
    spread = f"median paired ratio 1.100 over {rounds} rounds (quartiles 1.100-1.100, min-max 1.100-2.200)"
    assert step["detail"] == spread
    assert report.targets_markdown([step]) == f"- **does not hold**: {STEP_TIME} (head): {spread}"


def test_too_few_rounds_give_no_step_time_verdict():
    few = report.MIN_VERDICT_ROUNDS - 1
    targets = report.check_targets(_fake_cases(timed_rounds=few))
    (step,) = [t for t in targets if t["target"] == STEP_TIME]
    assert step["holds"] is None
    needs = f"{few} timed rounds, a step-time verdict needs at least {report.MIN_VERDICT_ROUNDS}"
    assert step["verdict"] == f"no verdict: {needs}"
    assert "quartiles" in step["detail"] and "min-max" in step["detail"]  # the figures are still reported
    assert all(t["holds"] is not None for t in targets if t is not step)  # sizes and losses do not need rounds
    line = report.targets_markdown([step])
    assert line.startswith("- no verdict: ") and "does not hold" not in line and "- holds" not in line


def test_a_smoke_run_gives_no_verdict_at_all():
    targets = report.check_targets(_fake_cases(timed_rounds=4), smoke=True)
    assert targets and all(t["holds"] is None and t["verdict"] == report.SMOKE_RUN for t in targets)
    text = report.targets_markdown(targets)
    assert "does not hold" not in text and "- holds" not in text and "smoke run" in text
    assert "not verdicts" in report.smoke_note(4) and "SMOKE RUN" in report.smoke_note(4)


@pytest.mark.slow
def test_run_benchmarks_end_to_end(tmp_path):
    command = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "run_benchmarks.py"),
        "--model",
        TINY_BERT,
        "--quick",
        "--batch_size",
        "4",
        "--seq_len",
        "16",
        "--cases",
        "head/trainer",
        "head/freezing",
        "--output_dir",
        str(tmp_path),
        "--chart",
        str(tmp_path / "docs" / "chart.png"),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(results["cases"]) == {"head/trainer", "head/freezing"}
    for row in results["cases"].values():
        assert len(row["step_times_s"]) == 5 and row["peak_rss_bytes"] > 0
    # --quick is a smoke run: no verdict anywhere, and it says so; the figures are still there to check
    assert results["smoke_run"] is True
    assert results["targets"] and all(t["holds"] is None for t in results["targets"])
    table = (tmp_path / "benchmark_table.md").read_text()
    assert table.startswith("SMOKE RUN (--quick, 4 timed rounds per case)")
    assert "does not hold" not in table and "- holds" not in table
    assert "| head only | FreezingTrainer |" in table
    ours, hand = results["cases"]["head/freezing"], results["cases"]["head/trainer"]
    assert ours["losses"] == hand["losses"] and ours["ratio_rounds"] == 4
    for row in (ours, hand):
        assert row["grad_bytes"] == 4 * row["trainable_params"]
        assert row["optimizer_state_bytes"]["per_parameter"] == 8 * row["trainable_params"]
    assert (tmp_path / "docs" / "chart.png").stat().st_size > 0
