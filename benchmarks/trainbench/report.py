"""Turn raw measurements into the figures, the target checks, a Markdown table and a chart.

Step times are compared as paired ratios: in every round a case's step is divided by its reference's
step of the same round (they ran seconds apart), and the median of those ratios is reported. Drift
of the machine over the run then cancels instead of landing on whichever case ran during it.

A verdict is only given where it is stable: a step-time target needs :data:`MIN_VERDICT_ROUNDS` timed
rounds and prints the spread of the per-round ratios it rests on, and a smoke run (``--quick``) gives
no verdict at all (``holds`` is None, ``verdict`` says why): it shows that the harness runs.
"""

from __future__ import annotations

import statistics
from typing import Any

from .cases import CASE_IDS, DEPTH_BY_NAME, DEPTHS, KIND_LABELS, case_label, reference_of

MIB = 1024 * 1024
STEP_TOLERANCE = 0.02  # FreezingTrainer may be at most 2% slower than the hand-frozen Trainer
ADAM_BYTES_PER_PARAM = 8  # exp_avg + exp_avg_sq in float32
GRAD_BYTES_PER_PARAM = 4
# Peak RSS of the same case repeats within about +-0.3 MiB (pages, Python objects); a difference below this
# is reported, not counted as a miss.
MEMORY_RESOLUTION_MIB = 1.0
# Timed rounds a step-time verdict needs. The median of n paired ratios moves by about 1.25 sd / sqrt(n); the
# per-round ratios of a full run spread by about +-5% around their median (quartiles, sd about 0.08), so with 4
# rounds (--quick) the median moves by about 5%: two quick runs printed 1.067-1.135 for ratios the full run held at
# 0.996-1.010. With 30 rounds (the default `make bench`) it moves by under 2%, the tolerance; two full runs agreed.
MIN_VERDICT_ROUNDS = 30
SMOKE_RUN = "smoke run (--quick): no verdict"


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarize(times: dict[str, list[float]], warmup: int) -> dict[str, dict[str, Any]]:
    """Per case: median step time and the median of per-round ratios to its depth's reference."""
    rows: dict[str, dict[str, Any]] = {}
    for case_id, case_times in times.items():
        timed = case_times[warmup:]
        row: dict[str, Any] = {"step_times_s": case_times, "median_step_s": statistics.median(timed)}
        reference = reference_of(case_id)
        if reference in times:
            ratios = [t / r for t, r in zip(timed, times[reference][warmup:])]
            row["reference"] = reference
            row["ratio_to_reference"] = statistics.median(ratios)
            row["ratio_quartiles"] = _quartiles(ratios)
            row["ratio_range"] = (min(ratios), max(ratios))
            row["ratio_rounds"] = len(ratios)
        rows[case_id] = row
    return rows


def _target(target: str, depth: str, holds: bool | None, detail: str, why_none: str = "") -> dict[str, Any]:
    verdict = ("holds" if holds else "does not hold") if holds is not None else f"no verdict: {why_none}"
    return {"target": target, "depth": depth, "holds": holds, "verdict": verdict, "detail": detail}


def _step_time_target(depth: str, row: dict[str, Any]) -> dict[str, Any]:
    ratio, rounds = row["ratio_to_reference"], row.get("ratio_rounds", 0)
    (q1, q3), (low, high) = row["ratio_quartiles"], row.get("ratio_range", row["ratio_quartiles"])
    detail = (
        f"median paired ratio {ratio:.3f} over {rounds} rounds (quartiles {q1:.3f}-{q3:.3f}, "
        f"min-max {low:.3f}-{high:.3f})"
    )
    holds = ratio <= 1 + STEP_TOLERANCE if rounds >= MIN_VERDICT_ROUNDS else None
    why = f"{rounds} timed rounds, a step-time verdict needs at least {MIN_VERDICT_ROUNDS}"
    return _target("step time within 2% of hand-frozen Trainer", depth, holds, detail, why)


def check_targets(cases: dict[str, dict[str, Any]], smoke: bool = False) -> list[dict[str, Any]]:
    """The issue's targets, each with its verdict and the figures behind it.

    ``holds`` is True or False, or None where the figures cannot carry a verdict: a step time from fewer
    than :data:`MIN_VERDICT_ROUNDS` rounds, or every target of a smoke run (``smoke``, from ``--quick``).
    """
    targets: list[dict[str, Any]] = []
    for depth in DEPTHS:
        ours, ref = cases.get(f"{depth.name}/freezing"), cases.get(f"{depth.name}/trainer")
        if not ours or not ref:
            continue
        if "ratio_to_reference" in ours:
            targets.append(_step_time_target(depth.name, ours))
        if "losses" in ours and "losses" in ref:
            same = ours["losses"] == ref["losses"]
            detail = (
                f"{len(ours['losses'])} steps, bitwise equal"
                if same
                else f"first losses {ours['losses'][:3]} vs {ref['losses'][:3]}"
            )
            targets.append(_target("identical losses", depth.name, same, detail))
        if "peak_rss_bytes" in ours and "peak_rss_bytes" in ref:
            delta = (ours["peak_rss_bytes"] - ref["peak_rss_bytes"]) / MIB
            detail = (
                f"{ours['peak_rss_bytes'] / MIB:.1f} MiB vs {ref['peak_rss_bytes'] / MIB:.1f} MiB "
                f"({delta:+.1f} MiB; resolution {MEMORY_RESOLUTION_MIB:g} MiB)"
            )
            targets.append(
                _target(
                    "peak memory at or below hand-frozen Trainer", depth.name, delta <= MEMORY_RESOLUTION_MIB, detail
                )
            )
    for case_id, row in cases.items():
        trainable = row.get("trainable_params")
        if not trainable or "optimizer_state_bytes" not in row or case_id.endswith("/forward"):
            continue
        state = row["optimizer_state_bytes"]
        detail = (
            f"{state['per_parameter']:,} B in moment buffers for {trainable:,} params "
            f"(+{state['other']:,} B of per-tensor step counters)"
        )
        holds = state["per_parameter"] == ADAM_BYTES_PER_PARAM * trainable
        targets.append(_target("optimizer state = 8 B per trainable parameter", case_id, holds, detail))
        holds = row["grad_bytes"] == GRAD_BYTES_PER_PARAM * trainable
        detail = f"{row['grad_bytes']:,} B for {trainable:,} params"
        targets.append(_target("gradients = 4 B per trainable parameter", case_id, holds, detail))
    if smoke:
        for target in targets:
            target.update(holds=None, verdict=SMOKE_RUN)
    return targets


def smoke_note(timed_rounds: int) -> str:
    """The line a smoke run's table and chart carry instead of verdicts."""
    return (
        f"SMOKE RUN (--quick, {timed_rounds} timed rounds per case): it shows that the harness runs; its figures "
        f"are not verdicts. `make bench` ({MIN_VERDICT_ROUNDS} rounds) gives them."
    )


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:,.1f}"


def markdown_table(cases: dict[str, dict[str, Any]]) -> str:
    """The README table: one row per case, grouped by depth."""
    lines = [
        "| trains | case | median step (s) | vs hand-frozen | peak RSS (MiB) | optimizer state (MiB) "
        "| gradients (MiB) | trainable params |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for case_id in CASE_IDS:
        row = cases.get(case_id)
        if row is None:
            continue
        depth = DEPTH_BY_NAME[case_id.split("/")[0]]
        step = f"{row['median_step_s']:.3f}" if "median_step_s" in row else "-"
        ratio = f"{row['ratio_to_reference']:.3f}" if "ratio_to_reference" in row else "-"
        state = row.get("optimizer_state_bytes", {}).get("total")
        trainable = row.get("trainable_params")
        lines.append(
            f"| {depth.label} | {case_label(case_id)} | {step} | {ratio} | {_mib(row.get('peak_rss_bytes'))} "
            f"| {_mib(state)} | {_mib(row.get('grad_bytes'))} | {'-' if trainable is None else f'{trainable:,}'} |"
        )
    return "\n".join(lines)


def targets_markdown(targets: list[dict[str, Any]]) -> str:
    """One line per target: its verdict (``**does not hold**`` in bold; "no verdict" with the reason), the figures."""
    lines = []
    for t in targets:
        verdict = "**does not hold**" if t["holds"] is False else t["verdict"]
        lines.append(f"- {verdict}: {t['target']} ({t['depth']}): {t['detail']}")
    return "\n".join(lines)


def draw_chart(cases: dict[str, dict[str, Any]], path: str, title: str) -> None:
    """Step time and peak memory per case, grouped by depth; the bars present in a group are centred.

    Memory bars are split: the pale part is what the process held before its first step (imports, model),
    the solid part what training added. FreezingTrainer time bars carry their paired ratio.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"trainer": "#7f7f7f", "freezing": "#1f77b4", "lora": "#ff7f0e", "forward": "#2ca02c"}
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.4))
    width = 0.2
    labelled: set[str] = set()
    for d, depth in enumerate(DEPTHS):
        present = [k for k in KIND_LABELS if f"{depth.name}/{k}" in cases]
        for i, kind in enumerate(present):
            row = cases[f"{depth.name}/{kind}"]
            x = d + (i - (len(present) - 1) / 2) * width
            label = None
            if kind not in labelled:
                labelled.add(kind)
                label = "Trainer (frozen by hand / full)" if kind == "trainer" else KIND_LABELS[kind]
            if "median_step_s" in row:
                time_axis.bar(x, row["median_step_s"], width, color=colors[kind], label=label)
                if kind == "freezing" and "ratio_to_reference" in row:
                    time_axis.annotate(
                        f"{row['ratio_to_reference']:.2f}x",
                        (x, row["median_step_s"]),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
            if "peak_rss_bytes" in row:
                peak, before = row["peak_rss_bytes"] / MIB, row.get("rss_before_bytes", 0) / MIB
                memory_axis.bar(x, before, width, color=colors[kind], alpha=0.35)
                memory_axis.bar(x, peak - before, width, bottom=before, color=colors[kind])
    for axis, ylabel in (
        (time_axis, "median step time (s)"),
        (memory_axis, "peak resident memory (MiB)\npale: held before the first step"),
    ):
        axis.set_xticks(range(len(DEPTHS)), [d.label for d in DEPTHS], fontsize=8)
        axis.set_ylabel(ylabel, fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    time_axis.legend(fontsize=7, loc="upper right")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
