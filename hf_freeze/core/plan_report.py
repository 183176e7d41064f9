"""The text a :class:`~hf_freeze.core.plan.FreezePlan` reports: its per-group rows and table.

Kept apart from the plan's data, application and persistence: the table is for people (logs,
``hf-freeze inspect``), and its layout changes without touching what a plan decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .param_decision import GROUP_EMBEDDINGS, GROUP_HEAD, GROUP_OTHER

if TYPE_CHECKING:
    from .plan import FreezePlan


def group_rows(plan: FreezePlan) -> list[dict[str, Any]]:
    """Rows of the per-group table, in model order: embeddings, layers, other, head."""
    rows: dict[str, dict[str, Any]] = {}
    for p in plan.params:
        row = rows.get(p.group) or rows.setdefault(
            p.group,
            {
                "group": p.group,
                "stack": p.stack,
                "layer": p.layer,
                "trainable": 0,
                "frozen": 0,
                "tensors": 0,
                "rules": {},
            },
        )
        row["trainable" if p.trainable else "frozen"] += p.numel
        row["tensors"] += 1
        row["rules"][p.rule] = row["rules"].get(p.rule, 0) + 1
    order = {GROUP_EMBEDDINGS: 0, GROUP_OTHER: 2, GROUP_HEAD: 3}
    stack_order = {s["path"]: i for i, s in enumerate(plan.stacks)}

    def key(row: dict[str, Any]) -> tuple:
        if row["layer"] is None:
            return (order.get(row["group"], 2), 0, 0)
        return (1, stack_order.get(row["stack"], 0), row["layer"])

    return sorted(rows.values(), key=key)


def render_table(plan: FreezePlan) -> str:
    """A readable per-group table (plus pattern hit counts and ties)."""
    rows = [("group", "trainable", "frozen", "tensors", "decided by")]
    for row in group_rows(plan):
        rules = ", ".join(f"{rule} ({count})" for rule, count in row["rules"].items())
        rows.append((row["group"], f"{row['trainable']:,}", f"{row['frozen']:,}", str(row["tensors"]), rules))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [row[j].rjust(widths[j]) for j in (1, 2, 3)] + [row[4]]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 10)
    for option, hits in plan.pattern_hits.items():
        for pattern, count in hits.items():
            lines.append(f"{option} '{pattern}': {count} parameter(s)")  # as typed: repr doubles backslashes
    for tie in plan.ties:
        lines.append("tied: " + " = ".join(tie))
    return "\n".join(lines)
