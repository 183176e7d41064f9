"""Worker for tests/test_recipes_distributed.py: run a recipe script with the tests' checksum recorder.

Launched by the tests exactly as a user launches the recipe, with this script in the recipe's place:

    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml tests/distributed_scripts/run_recipe.py \
        --checksums /tmp/sums recipes/text_classification.py --use_cpu --max_steps 3

Every rank writes ``/tmp/sums/rank-<r>.json`` (see ``tests/instrumentation.py``); the recipe's own
arguments follow its path unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from instrumentation import ChecksumRecorder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checksums", required=True, metavar="DIR", help="where each rank writes rank-<r>.json")
    parser.add_argument("recipe", help="the recipe script, e.g. recipes/text_classification.py")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="the recipe's own arguments")
    options = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(options.recipe)))  # the recipe's helper modules
    from recipe_run import run_recipe_file

    run_recipe_file(options.recipe, options.recipe_args, [ChecksumRecorder(options.checksums)])


if __name__ == "__main__":
    main()
