"""``hf-freeze``: the command line. ``hf-freeze inspect MODEL`` checks a freezing configuration
against a model built from its config on the meta device (no weights read), before any job starts.

    hf-freeze inspect path/to/llama --freeze-layers :70 --freeze-embeddings --plot freeze_map.png
    hf-freeze inspect --config recipes/configs/my_run.yaml --json
    hf-freeze rebuild path/to/base out/checkpoint-500 --output out/full-500   # see cli/rebuild.py

Exit codes: 0 success; 2 a usage error or any invalid option, unknown model, pattern without hits
(under ``freeze_strict``), layer range outside the stack or empty trainable set (argparse style:
the input is wrong); 1 the environment failed (matplotlib missing for ``--plot``, the PNG cannot be
written). Errors are one line on stderr: ``hf-freeze: error: ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from ..errors import FreezeError

if TYPE_CHECKING:  # the imports below stay out of `hf-freeze --help`; `inspect` imports them when it runs
    from ..core.plan import FreezePlan
    from ..parsing import FreezingArgumentParser

PROG = "hf-freeze"
COMMANDS = {
    "inspect": "check freezing options against a model built from its config (no weights read)",
    "rebuild": "write a full model folder from a base model and a partial (save_only_trainable) checkpoint",
}


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser: lists the commands. Each command builds its own parser when it runs
    (:func:`make_inspect_parser`), so ``hf-freeze --help`` imports neither transformers nor torch."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="Partial fine-tuning of Hugging Face models.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def make_inspect_parser() -> FreezingArgumentParser:
    """``hf-freeze inspect``: the :class:`~hf_freeze.FreezeSpec` options as flags (from their declarations,
    with dashes or underscores), ``--config FILE``, MODEL and the command's own flags. Imports
    transformers (for ``HfArgumentParser``), not torch."""
    from ..core.spec import FreezeSpec
    from ..parsing import FreezingArgumentParser
    from .inspection import TASKS

    parser = FreezingArgumentParser(
        FreezeSpec,
        prog=f"{PROG} inspect",
        description="Resolve the freezing options against MODEL built on the meta device and print the plan: "
        "per group trainable/frozen counts, the rules that decided them, pattern hits and tied weights. "
        "Exit code 2 on any invalid option, unknown model, pattern without hits or empty trainable set.",
        ignore_unknown_config_keys=True,
        config_help="A recipe YAML (or JSON) file: its freezing keys and model_name_or_path are used, other "
        "keys ignored (a near-miss such as freeze_layer is an error); flags override it, e.g. "
        "`--config recipes/configs/text_classification.yaml`.",
    )
    parser.add_argument(
        "model_name_or_path",
        nargs="?",
        metavar="MODEL",
        help="a local model folder, a local config.json, or a Hub id (its config is fetched; offline: "
        "an error); without it, model_name_or_path from --config",
    )
    parser.add_argument(
        "--task",
        metavar="TASK",
        help=f"the head to build, one of {', '.join(TASKS)} ; without it, the head of the config's architectures",
    )
    parser.add_argument(
        "--num-labels",
        "--num_labels",
        dest="num_labels",
        type=int,
        metavar="N",
        help="number of labels of a classification head",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the plan as JSON (FreezePlan.to_json)")
    output.add_argument(
        "-v", "--verbose", action="store_true", help="also list every parameter with the rule that decided it"
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw the freeze map (needs hf-freeze[plot])")
    return parser


def _parameter_lines(plan: FreezePlan) -> list[str]:
    rows = [("parameter", "shape", "numel", "state", "decided by")]
    for p in plan.params:
        name = p.name + "".join(f" (= {alias})" for alias in p.aliases)
        rows.append(
            (
                name,
                "x".join(map(str, p.shape)) or "()",
                f"{p.numel:,}",
                "trainable" if p.trainable else "frozen",
                p.rule,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        "  ".join(
            [
                row[0].ljust(widths[0]),
                row[1].ljust(widths[1]),
                row[2].rjust(widths[2]),
                row[3].ljust(widths[3]),
                row[4],
            ]
        )
        for row in rows
    ]


def render_text(plan: FreezePlan, model: str, task: str, verbose: bool = False) -> str:
    """What ``inspect`` prints: header, summary line, per-group table, pattern hits, ties."""
    stacks = ", ".join(f"{s['path']} ({s['num_layers']} layers)" for s in plan.stacks) or "none found"
    lines = [
        f"{model}: {plan.model_class} (task {task}), built on the meta device: no weights read",
        f"layer stacks: {stacks}",
        plan.summary(),
        "",
        plan.table(),
    ]
    if not plan.ties:
        lines.append("tied: none")
    if plan.frozen_norms:
        lines.append(f"frozen norm statistics: {len(plan.frozen_norms)} module(s) kept in eval mode")
    if verbose:
        lines += ["", *_parameter_lines(plan)]
    return "\n".join(lines)


def _run_inspect(argv: list[str]) -> int:
    from .inspection import model_display_name, require_model, run_inspection

    spec, args = make_inspect_parser().parse_args_and_config(argv, look_for_args_file=False)
    model = require_model(args.model_name_or_path)
    plan, task = run_inspection(model, spec, args.task, args.num_labels, args.plot)
    if args.json:
        print(plan.to_json())
    else:
        print(render_text(plan, model_display_name(model), task, verbose=args.verbose))
        if args.plot:
            print(f"freeze map written to {args.plot}")
    return 0


def _run_rebuild(argv: list[str]) -> int:
    from .rebuild import main as rebuild

    return rebuild(argv)


# command -> what runs it (its arguments after the command name); a new command adds a line here and to COMMANDS
RUNNERS = {"inspect": _run_inspect, "rebuild": _run_rebuild}


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hf-freeze`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        args = make_parser().parse_args(argv)  # --help, --version and usage errors exit here, argparse style
        argv = argv[argv.index(args.command) :]
    # Warnings (a pattern without hits under freeze_strict=False) go to stderr for the run only.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logger = logging.getLogger("hf_freeze")
    logger.addHandler(handler)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # building on the meta device is noisy and harmless
    try:
        return RUNNERS[argv[0]](argv[1:])
    except FreezeError as err:
        _error(str(err))
        return 2
    except (ImportError, OSError) as err:
        _error(str(err))
        return 1
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)


if __name__ == "__main__":
    sys.exit(main())
