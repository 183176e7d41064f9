"""``FreezeSpec``: the options that decide what is frozen, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from ..errors import InvalidOptionError
from ..options import SPEC_OPTIONS, options_dataclass
from .layer_selection import LayerSelection
from .matching import compile_pattern

if TYPE_CHECKING:
    from torch import nn

    from .plan import FreezePlan


def _as_pattern_list(value: Any, option: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidOptionError(
        f"`{option}`={value!r} is not valid: give a list of regex strings, e.g. {option}=['embeddings', 'layer.0']."
    )


# FreezeSpec's fields: one per "spec" option of hf_freeze.options, with its default and help text.
_SpecFields = options_dataclass("_SpecFields", SPEC_OPTIONS, module=__name__)


@dataclass
class FreezeSpec(_SpecFields):
    """What to freeze, independent of any model. :meth:`resolve` turns it into a :class:`FreezePlan`.

    Example:
        >>> spec = FreezeSpec(freeze_embeddings=True, freeze_layers=":4", unfreeze=["layer.3.output"])
        >>> plan = spec.resolve(model)   # doctest: +SKIP
        >>> plan.apply(model)            # doctest: +SKIP

    Precedence, lowest to highest: the model's current ``requires_grad``; ``freeze_embeddings`` and
    ``freeze_layers``; ``freeze`` patterns; ``unfreeze`` patterns; ``train_head``.
    """

    def __post_init__(self) -> None:
        self.freeze = _as_pattern_list(self.freeze, "freeze")
        self.unfreeze = _as_pattern_list(self.unfreeze, "unfreeze")
        for option in ("freeze", "unfreeze"):
            for pattern in getattr(self, option):
                compile_pattern(pattern, option)
        for option in (o.name for o in SPEC_OPTIONS if o.type is bool):
            if not isinstance(getattr(self, option), bool):
                raise InvalidOptionError(f"`{option}`={getattr(self, option)!r} is not valid: use True or False.")
        if isinstance(self.freeze_layers, str) and self.freeze_layers.strip().lower() in ("", "none"):
            self.freeze_layers = None
        self.layer_selection  # noqa: B018 - validates the syntax now, before any model is seen
        if self.layer_stack is not None:
            if isinstance(self.layer_stack, str) and not self.layer_stack.strip():
                self.layer_stack = None
            else:
                compile_pattern(self.layer_stack, "layer_stack")

    @property
    def layer_selection(self) -> LayerSelection | None:
        """``freeze_layers`` parsed, once per value (validation and every resolve reuse it)."""
        value = self.freeze_layers
        cached = self.__dict__.get("_layer_selection")
        if cached is None or cached[0] is not value:
            cached = self.__dict__["_layer_selection"] = (value, LayerSelection.parse(value))
        return cached[1]

    @property
    def freezes_anything(self) -> bool:
        """False when no rule is set: the plan then keeps the model's own ``requires_grad``."""
        return bool(self.freeze or self.unfreeze or self.freeze_embeddings or self.freeze_layers is not None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FreezeSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidOptionError(f"Unknown freeze option(s) {unknown}; valid options: {sorted(known)}.")
        return cls(**data)

    def resolve(self, model: nn.Module) -> FreezePlan:
        """Decide, for every parameter of ``model``, whether it trains and which rule said so."""
        from .resolve import resolve_plan  # here, so that reading options does not import torch

        return resolve_plan(self, model)
