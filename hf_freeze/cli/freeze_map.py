"""The freeze map: one stacked bar per group (embeddings, each layer, other, head), frozen below and
trainable above, so a wrong pattern shows at a glance (a grey bar where blue was meant).

matplotlib is an optional extra (``pip install "hf-freeze[plot]"``) and is imported only here. The
figure is drawn on its own Agg canvas, never through ``pyplot``, so it does not disturb a notebook's
backend or leak global figures.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from ..core.param_decision import GROUP_EMBEDDINGS, GROUP_HEAD, GROUP_OTHER

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..core.plan import FreezePlan

INSTALL_HINT = 'the freeze map needs matplotlib: pip install "hf-freeze[plot]"'
TRAINABLE_COLOR = "#0072B2"
FROZEN_COLOR = "#BBBBBB"
_SHORT = {GROUP_EMBEDDINGS: "emb", GROUP_OTHER: "other", GROUP_HEAD: "head"}


def _human(value: float, _position: object = None) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def _stack_names(paths: list[str]) -> dict[str, str]:
    """Distinct short names for several stacks: the first path segment where they differ."""
    split = [p.split(".") for p in paths]
    common = 0
    while all(len(s) > common + 1 for s in split) and len({s[common] for s in split}) == 1:
        common += 1
    return {p: s[common] if len(s) > common else p for p, s in zip(paths, split)}


def _bars(plan: FreezePlan) -> tuple[list[str], list[int], list[int], list[tuple[str, int, int]]]:
    """Tick labels, frozen and trainable counts per bar, and (stack name, first bar, last bar) spans."""
    rows = plan.groups()
    stack_paths = [s["path"] for s in plan.stacks]
    names = _stack_names(stack_paths) if len(stack_paths) > 1 else {}
    labels, frozen, trainable, spans = [], [], [], []
    for position, row in enumerate(rows):
        group = row["group"]
        if row["layer"] is None:
            labels.append(_SHORT[group])
        else:
            stack, index = row["stack"], str(row["layer"])
            labels.append(index)
            if spans and spans[-1][0] == stack:
                spans[-1][2] = position
            else:
                spans.append([stack, position, position])
        frozen.append(row["frozen"])
        trainable.append(row["trainable"])
    return labels, frozen, trainable, [(names.get(s, s), a, b) for s, a, b in spans]


def draw_freeze_map(
    plan: FreezePlan,
    path: str | os.PathLike | None = None,
    *,
    model_name: str | None = None,
    figsize: tuple[float, float] = (12.0, 5.0),
    dpi: int = 100,
) -> Figure:
    """Draw the plan as stacked bars per group; save a PNG to ``path`` when given; return the figure.

    The PNG is exactly ``figsize * dpi`` pixels (1200x500 by default), whatever the model.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise ImportError(INSTALL_HINT) from None

    labels, frozen, trainable, spans = _bars(plan)
    positions = list(range(len(labels)))
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(positions, frozen, color=FROZEN_COLOR, width=0.8, label="frozen")
    ax.bar(positions, trainable, bottom=frozen, color=TRAINABLE_COLOR, width=0.8, label="trainable")

    totals = [f + t for f, t in zip(frozen, trainable)]
    ax.set_ylim(0, max(totals, default=1) * 1.15 or 1)
    if len(labels) <= 24:  # few bars: print each bar's trainable share on top of it
        for x, total, train in zip(positions, totals, trainable):
            if total:
                ax.annotate(
                    f"{100 * train / total:.0f}%",
                    xy=(x, total),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="#333333",
                )

    # Thin the layer labels of deep stacks; the embeddings/other/head labels always show.
    step = max(1, math.ceil(len(labels) / 40))
    shown = [i for i, label in enumerate(labels) if not label.isdigit() or int(label) % step == 0]
    many = len(labels) > 24
    ax.set_xticks(shown, [labels[i] for i in shown], fontsize=8 if many else 10, rotation=90 if many else 0)
    ax.set_xlim(-0.7, len(labels) - 0.3)
    ax.yaxis.set_major_formatter(FuncFormatter(_human))
    ax.set_ylabel("parameters")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if len(spans) == 1:
        ax.set_xlabel(f"layer ({spans[0][0]})")
    else:
        for name, first, last in spans:
            ax.annotate(
                name,
                xy=((first + last) / 2, 0),
                xycoords=("data", "axes fraction"),
                xytext=(0, -26),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=9,
                color="#444444",
            )
            for edge in (first - 0.5, last + 0.5):
                if 0 < edge < len(labels) - 1:
                    ax.axvline(edge, color="#888888", linewidth=0.8, linestyle=":")
    ax.legend(
        handles=[Patch(color=TRAINABLE_COLOR, label="trainable"), Patch(color=FROZEN_COLOR, label="frozen")],
        loc="upper center",
        ncol=2,
        fontsize=9,
        framealpha=0.9,
    )
    title = f"{model_name or plan.model_class} ({plan.model_class})" if model_name else plan.model_class
    ax.set_title(f"{title}: freeze map\n{plan.summary()}", fontsize=11)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
