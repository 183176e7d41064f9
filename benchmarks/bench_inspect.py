"""Time and peak memory of ``hf-freeze inspect`` on a Llama config of about 70B parameters.

The config is Llama-3-70B's shape (80 layers, hidden size 8192, 64 heads, 8 KV heads, vocabulary
128256), written to a temporary folder; no weights exist anywhere. Each run is a fresh process, as
a user would start it, so the figures include Python, torch and transformers imports. A second
process that only imports the same modules (hf_freeze, torch, transformers' Llama) gives the floor
the command cannot go below; the difference is the meta-device build, the plan and the output.

Usage:
    .venv/bin/python benchmarks/bench_inspect.py                 # 3 runs, prints a Markdown table
    .venv/bin/python benchmarks/bench_inspect.py --repeats 1 --json benchmarks/results/inspect.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ARGS = ["--freeze-layers", ":70", "--freeze-embeddings"]


def write_config(folder: str) -> None:
    import transformers

    transformers.LlamaConfig(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        architectures=["LlamaForCausalLM"],
    ).save_pretrained(folder)


def run_child(command: list[str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one child process; its stdout.

    ``RUSAGE_CHILDREN.ru_maxrss`` is the largest of all waited-for children, so a separate
    measuring process runs each command alone and reports the figure of its only child.
    """
    probe = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        f"done = subprocess.run({command!r}, capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "rss, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime\n"
        "print(json.dumps({'wall': wall, 'rss': rss, 'cpu': cpu, 'rc': done.returncode, 'out': done.stdout, "
        "'err': done.stderr[-2000:]}))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = json.loads(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    )
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result['rc']}):\n{result['err']}")
    return result["wall"], result["cpu"], result["rss"], result["out"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement (median)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--plot", action="store_true", help="also draw the freeze map in the timed command")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model_dir = os.path.join(folder, "llama-70b")
        write_config(model_dir)
        command = [sys.executable, "-m", "hf_freeze.cli", "inspect", model_dir, *ARGS]
        if args.plot:
            command += ["--plot", os.path.join(folder, "freeze_map.png")]
        imports = [
            sys.executable,
            "-c",
            "import hf_freeze.cli, hf_freeze.cli.inspection; from transformers import LlamaForCausalLM",
        ]

        runs, floors, output = [], [], ""
        for _ in range(args.repeats):
            *figures, output = run_child(command)
            runs.append(figures)
            floors.append(run_child(imports)[:3])

    summary = next(line for line in output.splitlines() if line.startswith("trainable params"))

    def median(rows: list, column: int) -> float:
        return round(statistics.median(row[column] for row in rows), 2)

    figures = {
        "command": "hf-freeze inspect <llama-70b config> " + " ".join(ARGS) + (" --plot ..." if args.plot else ""),
        "plan": summary,
        "wall_s": median(runs, 0),
        "cpu_s": median(runs, 1),
        "peak_rss_mib": round(max(row[2] for row in runs), 1),
        "imports_only_wall_s": median(floors, 0),
        "imports_only_cpu_s": median(floors, 1),
        "imports_only_peak_rss_mib": round(max(row[2] for row in floors), 1),
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    rows = [
        ("`hf-freeze inspect`, 70B Llama config", "wall_s", "cpu_s", "peak_rss_mib"),
        (
            "imports only (the floor)",
            "imports_only_wall_s",
            "imports_only_cpu_s",
            "imports_only_peak_rss_mib",
        ),
    ]
    print(f"plan: {summary}")
    print("| process | wall time (median) | CPU time (median) | peak RSS |")
    print("|---|---|---|---|")
    for label, wall, cpu, rss in rows:
        print(f"| {label} | {figures[wall]} s | {figures[cpu]} s | {figures[rss]} MiB |")
    load = figures["load_avg_1min"]
    print(f"({args.repeats} fresh processes each; {figures['cpus']} CPUs, 1-min load average {load})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
