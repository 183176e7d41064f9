"""The rules that decide a parameter, named once.

A plan records, per parameter, the rule that decided it: a :class:`Rule` and, for the pattern rules,
the pattern. Code compares those structured values (``decision.rule.kind is Rule.FREEZE_LAYERS``);
the text form (``"freeze_layers"``, ``"freeze:layer\\.1"``) exists for people and for
``freeze_plan.json``, and :meth:`AppliedRule.parse` is the one place that reads it back.

Example:
    >>> AppliedRule(Rule.FREEZE, r"layer\\.1")
    AppliedRule(Rule.FREEZE, 'layer\\\\.1')
    >>> str(AppliedRule(Rule.FREEZE, r"layer\\.1"))
    'freeze:layer\\\\.1'
    >>> AppliedRule.parse("freeze_layers").kind is Rule.FREEZE_LAYERS
    True
"""

from __future__ import annotations

from enum import Enum

from ..errors import PlanMismatchError


class Rule(str, Enum):
    """Who decided a parameter, lowest precedence first (``UNFREEZE_STRATEGY`` acts during training)."""

    REQUIRES_GRAD = "requires_grad"
    FREEZE_EMBEDDINGS = "freeze_embeddings"
    FREEZE_LAYERS = "freeze_layers"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    TRAIN_HEAD = "train_head"
    UNFREEZE_STRATEGY = "unfreeze_strategy"

    # The value, on every Python version (3.10 and 3.12 differ for str mixins otherwise).
    __str__ = str.__str__
    __format__ = str.__format__


PATTERN_RULES = frozenset({Rule.FREEZE, Rule.UNFREEZE})
# What gradual unfreezing brings back: only what the shortcuts froze.
SHORTCUT_RULES = frozenset({Rule.FREEZE_EMBEDDINGS, Rule.FREEZE_LAYERS})


class AppliedRule(str):
    """A rule as it decided a parameter: its :class:`Rule` and, for ``freeze``/``unfreeze``, the pattern.

    It is also its own text (a ``str``: ``decision.rule == "freeze_layers"``, joins and formats as
    text), so reports and code that read the rule as a string keep working; code that decides
    something compares ``kind`` and ``pattern``.
    """

    __slots__ = ("kind", "pattern")
    kind: Rule
    pattern: str | None

    def __new__(cls, kind: Rule | str, pattern: str | None = None) -> AppliedRule:
        kind = Rule(kind)
        if (pattern is not None) != (kind in PATTERN_RULES):
            raise ValueError(f"{kind} takes a pattern only for freeze/unfreeze rules, got pattern={pattern!r}")
        self = super().__new__(cls, kind.value if pattern is None else f"{kind.value}:{pattern}")
        self.kind = kind
        self.pattern = pattern
        return self

    def __getnewargs__(self) -> tuple[Rule, str | None]:  # pickle and copy rebuild it from its parts
        return (self.kind, self.pattern)

    @classmethod
    def of(cls, value: AppliedRule | Rule | str) -> AppliedRule:
        """``value`` as an :class:`AppliedRule` (a :class:`Rule` without pattern, or the text form)."""
        if isinstance(value, AppliedRule):
            return value
        if isinstance(value, Rule):
            return cls(value)
        return cls.parse(value)

    @classmethod
    def parse(cls, text: str) -> AppliedRule:
        """Read the text form back (``"freeze_layers"``, ``"unfreeze:pooler\\.dense"``)."""
        name, colon, pattern = str(text).partition(":")
        try:
            kind = Rule(name)
        except ValueError:
            kind = None
        if kind is None or (kind in PATTERN_RULES) != bool(colon):
            raise PlanMismatchError(
                f"Unknown rule {text!r} in a freeze plan; rules are {[r.value for r in Rule]} (the pattern "
                f"rules as 'freeze:<pattern>'/'unfreeze:<pattern>'). Resolve the plan again to rewrite it."
            )
        return cls(kind, pattern if colon else None)

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"AppliedRule(Rule.{self.kind.name}" + (f", {self.pattern!r})" if self.pattern is not None else ")")
