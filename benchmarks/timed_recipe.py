"""Run a recipe script with the step timer of ``trainbench/perf_callback.py`` (used by scripts/gpu_check.sh).

Launched exactly as the recipe is, with this script in the recipe's place:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml benchmarks/timed_recipe.py \
        --perf_file outputs/gpu_check/single_default.json recipes/text_classification.py --bf16

The JSON file holds the median step time, the peak GPU memory and the trainable parameter count;
the recipe's own arguments follow its path unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trainbench.perf_callback import StepPerfCallback  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf_file", required=True, metavar="JSON", help="where the step-time record goes")
    parser.add_argument("--warmup_steps", type=int, default=5, help="steps left out of the median, e.g. 5")
    parser.add_argument("recipe", help="the recipe script, e.g. recipes/text_classification.py")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="the recipe's own arguments")
    options = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(options.recipe)))  # the recipe's helper modules
    from recipe_run import run_recipe_file

    run_recipe_file(options.recipe, options.recipe_args, [StepPerfCallback(options.perf_file, options.warmup_steps)])


if __name__ == "__main__":
    main()
