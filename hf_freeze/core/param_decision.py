"""``ParamDecision``: what a plan says about one parameter, and the group labels it carries.

Resolving makes one per parameter tensor (100k for a large model), so the record is a slotted
dataclass and its shape/size readers are cheap (:func:`param_shape`, :func:`param_numel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from torch import nn

from .rules import AppliedRule

GROUP_EMBEDDINGS, GROUP_HEAD, GROUP_OTHER = "embeddings", "head", "other"


@dataclass(slots=True)
class ParamDecision:
    """One parameter: its name, shape, size, whether it trains and the rule that decided it.

    ``rule`` is an :class:`AppliedRule` (compare ``rule.kind`` and ``rule.pattern``; its text is for
    reports and JSON). ``stack``/``layer`` locate layer parameters (a layer is ``(stack, layer)``);
    ``group`` is a display label: ``"embeddings"``, ``"head"``, ``"other"`` or ``"<stack>.<layer>"``,
    never to be parsed. ``aliases`` lists the other names of a tied tensor.
    """

    name: str
    shape: list[int]
    numel: int
    trainable: bool
    rule: AppliedRule
    group: str
    stack: str | None = None
    layer: int | None = None
    aliases: list[str] = field(default_factory=list)


DECISION_FIELDS = tuple(f.name for f in fields(ParamDecision))


def param_shape(param: nn.Parameter) -> list[int]:
    """The shape a plan records for ``param``: its full shape, also when DeepSpeed ZeRO-3 partitioned it."""
    # DeepSpeed ZeRO-3 partitions parameters: their real shape lives in ds_shape. (A __dict__ lookup:
    # getattr with a default raises and catches internally, which costs seconds on 100k tensors.)
    return list(param.__dict__.get("ds_shape") or param.shape)


def param_numel(param: nn.Parameter) -> int:
    """The size a plan records for ``param`` (its full size under ZeRO-3, as :func:`param_shape`)."""
    return int(param.__dict__.get("ds_numel") or param.numel())
