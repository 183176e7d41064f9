"""``hf-freeze``: the command line. ``hf-freeze inspect MODEL`` checks a freezing configuration
against a model built from its config on the meta device (no weights read), before any job starts.

    hf-freeze inspect path/to/llama --freeze-layers :70 --freeze-embeddings --plot freeze_map.png
    hf-freeze inspect --config recipes/configs/my_run.yaml --json
    hf-freeze rebuild path/to/base out/checkpoint-500 --output out/full-500   (see .rebuild)

Exit codes: 0 success; 2 a usage error or any invalid option, unknown model, pattern without hits
(under ``freeze_strict``), layer range outside the stack or empty trainable set (argparse style:
the input is wrong); 1 the environment failed (matplotlib missing for ``--plot``, the PNG cannot be
written). Errors are one line on stderr: ``hf-freeze: error: ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from ..core.spec import FreezeSpec
from ..errors import FreezeError
from ..parsing import ExtendAction, accept_negative_values
from .rebuild import add_rebuild_parser

if TYPE_CHECKING:
    from ..core.plan import FreezePlan

PROG = "hf-freeze"


def _bool(value: str) -> bool:
    """``HfArgumentParser``'s spelling of booleans: true/false, yes/no, 1/0."""
    lowered = value.lower()
    if lowered in ("true", "t", "yes", "y", "1"):
        return True
    if lowered in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


# Same meaning as the FreezingTrainingArguments fields (not imported: TrainingArguments costs seconds).
HELP = {
    "freeze": "regex patterns of parameters to freeze, matched on whole name segments, e.g. "
    "--freeze embeddings 'encoder.layer.[0-3]'",
    "unfreeze": "regex patterns of parameters that train whatever the other rules say, e.g. "
    "--unfreeze 'layer.3.output'",
    "freeze_embeddings": "freeze the input embedding block (token/position/type embeddings and their norm)",
    "freeze_layers": "layers of the main stack to freeze: a count from the bottom, a Python-style slice, a "
    "comma list or 'all', e.g. :8, -2:, 0,3:5 (bounds outside the stack are errors)",
    "layer_stack": "pattern naming the layer stack(s) that --freeze-layers addresses, e.g. encoder.layer "
    "(default: the main stack(s) found automatically)",
    "train_head": "keep the task head trainable whatever the other rules say",
    "freeze_norm_stats": "frozen normalization layers (BatchNorm etc.) keep their running statistics fixed",
    "freeze_strict": "a pattern that matches no parameter is an error (false: a warning)",
}


def _add_freeze_options(parser: argparse.ArgumentParser) -> None:
    """One flag per ``FreezeSpec`` field, under the training argument's name (dashes or underscores).

    Defaults are suppressed, so only the flags given on the command line override the ``--config`` YAML.
    """
    group = parser.add_argument_group("freezing options (the same as FreezingTrainingArguments)")
    for spec_field in fields(FreezeSpec):
        name = spec_field.name
        dashed, underscored = f"--{name.replace('_', '-')}", f"--{name}"
        flags = [dashed] if dashed == underscored else [dashed, underscored]
        help_text = HELP.get(name, "see FreezeSpec").replace("%", "%%")
        default = spec_field.default if spec_field.default is not MISSING else spec_field.default_factory()
        if isinstance(default, list):
            group.add_argument(
                *flags,
                dest=name,
                nargs="+",
                action=ExtendAction,
                metavar="PAT",
                default=argparse.SUPPRESS,
                help=f"{help_text}; repeating the flag adds patterns",
            )
        elif isinstance(default, bool):
            group.add_argument(
                *flags,
                dest=name,
                nargs="?",
                const=True,
                type=_bool,
                metavar="BOOL",
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {str(default).lower()}; --no-{dashed[2:]} sets false)",
            )
            group.add_argument(
                f"--no-{name.replace('_', '-')}",
                f"--no_{name}",
                dest=name,
                action="store_false",
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
        else:
            group.add_argument(*flags, dest=name, metavar="VALUE", default=argparse.SUPPRESS, help=help_text)


def make_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from .inspection import TASKS

    parser = argparse.ArgumentParser(prog=PROG, description="Partial fine-tuning of Hugging Face models.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inspect = commands.add_parser(
        "inspect",
        help="check freezing options against a model built from its config (no weights read)",
        description="Resolve the freezing options against MODEL built on the meta device and print the plan: "
        "per group trainable/frozen counts, the rules that decided them, pattern hits and tied weights. "
        "Exit code 2 on any invalid option, unknown model, pattern without hits or empty trainable set.",
    )
    inspect.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="a local model folder, a local config.json, or a Hub id (its config is fetched; offline: "
        "an error) (default: model_name_or_path from --config)",
    )
    inspect.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="a recipe YAML: its freezing keys and model_name_or_path are used, other keys ignored; "
        "flags override it",
    )
    inspect.add_argument(
        "--task",
        metavar="TASK",
        help=f"the head to build, one of {', '.join(TASKS)} (default: from the config's architectures)",
    )
    inspect.add_argument(
        "--num-labels",
        "--num_labels",
        dest="num_labels",
        type=int,
        metavar="N",
        help="number of labels of a classification head",
    )
    output = inspect.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="print the plan as JSON (FreezePlan.to_json) instead"
    )
    output.add_argument(
        "-v", "--verbose", action="store_true", help="also list every parameter with the rule that decided it"
    )
    inspect.add_argument("--plot", metavar="FILE.png", help="draw the freeze map (needs hf-freeze[plot])")
    _add_freeze_options(inspect)
    accept_negative_values(inspect)  # --freeze-layers -2:
    add_rebuild_parser(commands)
    return accept_negative_values(parser)


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


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in fields(FreezeSpec)}
    return {k: v for k, v in vars(args).items() if k in names}


def _run_inspect(args: argparse.Namespace) -> int:
    from .inspection import merge_options, model_display_name, run_inspection

    model, spec = merge_options(args.model, args.config, _options(args))
    plan, task = run_inspection(model, spec, args.task, args.num_labels, args.plot)
    if args.json:
        print(plan.to_json())
    else:
        print(render_text(plan, model_display_name(model), task, verbose=args.verbose))
        if args.plot:
            print(f"freeze map written to {args.plot}")
    return 0


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hf-freeze`` console script; returns the exit code."""
    parser = make_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))  # usage errors exit 2 here, argparse style
    # Warnings (a pattern without hits under freeze_strict=False) go to stderr for the run only.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logger = logging.getLogger("hf_freeze")
    logger.addHandler(handler)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # building on the meta device is noisy and harmless
    try:
        return args.run(args) if hasattr(args, "run") else _run_inspect(args)
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
