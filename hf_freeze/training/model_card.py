"""The model card's "Partial fine-tuning" section: what was frozen and how to reproduce it."""

from __future__ import annotations

import os

from ..core.plan import PLAN_FILE, FreezePlan
from .resume import set_options

MODEL_CARD_HEADING = "## Partial fine-tuning (hf-freeze)"


def model_card_section(plan: FreezePlan) -> str:
    """Markdown for the model card: the summary, the options that were set, the plan hash and table."""
    options = set_options(plan)
    return (
        f"{MODEL_CARD_HEADING}\n\n"
        f"Only part of the model was trained. {plan.summary()}\n\n"
        f"Freezing options: `{options}` (plan hash `{plan.plan_hash}`, full plan in `{PLAN_FILE}`).\n\n"
        "```\n" + plan.table() + "\n```\n"
    )


def add_to_model_card(output_dir: str, plan: FreezePlan) -> None:
    """Append the section to ``output_dir/README.md`` once (a card written by ``Trainer``); no card, no-op."""
    path = os.path.join(output_dir, "README.md")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        if MODEL_CARD_HEADING in handle.read():
            return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n" + model_card_section(plan))
