"""Parse and resolve ``freeze_layers``: which layers of a stack to freeze.

Accepted values: an int ``n`` (the bottom ``n`` layers), ``"all"``, a Python-style slice
(``":8"``, ``"-2:"``, ``"2:10"``, ``"::2"``), a single index (``"3"`` means the bottom 3, like the
int; write ``"3:4"`` for layer 3 alone), or a comma list of indexes and slices (``"0,2,5:7"``).
Unlike Python, an index or slice bound outside the stack is an error instead of being clamped:
a typo must not silently freeze fewer layers than asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import LayerRangeError

_INT = r"[+-]?\d+"
_SLICE = re.compile(rf"^\s*({_INT})?\s*:\s*({_INT})?\s*(?::\s*({_INT})?\s*)?$")
_INDEX = re.compile(rf"^\s*({_INT})\s*$")
_VALID = "an int n (bottom n layers), 'all', a slice like ':8', '-2:' or '2:10', or a comma list like '0,3:5'"


@dataclass(frozen=True)
class LayerSelection:
    """A parsed ``freeze_layers`` value; :meth:`indices` resolves it against a stack length.

    The text is read once, by :meth:`parse`; ``parts`` holds what it says.
    """

    text: str
    parts: tuple[tuple[str, tuple[int | None, ...]], ...] = field(compare=False)

    @classmethod
    def parse(cls, value: int | str | None) -> LayerSelection | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise LayerRangeError(f"`freeze_layers`={value!r} is not valid: use {_VALID}.")
        if isinstance(value, int):
            if value < 0:
                raise LayerRangeError(
                    f"`freeze_layers`={value} is negative: an int freezes the bottom n layers. "
                    f"To freeze the top {-value} layers write '{value}:'."
                )
            return cls(str(value), (("bottom", (value,)),))
        if not isinstance(value, str) or not value.strip():
            raise LayerRangeError(f"`freeze_layers`={value!r} is not valid: use {_VALID}.")
        text = value.strip()
        if text.lower() in ("none", ""):
            return None
        return cls(text, _read(text))

    def indices(self, num_layers: int, stack: str = "the layer stack") -> list[int]:
        """The sorted layer indexes selected in a stack of ``num_layers`` layers.

        Raises :class:`LayerRangeError` for any bound outside ``[-num_layers, num_layers]``.
        """
        selected: set[int] = set()

        def out_of_range(what: str) -> LayerRangeError:
            return LayerRangeError(
                f"`freeze_layers`={self.text!r}: {what} is outside {stack}, which has {num_layers} layers "
                f"(valid indexes 0..{num_layers - 1} or -{num_layers}..-1). Bounds are not clamped."
            )

        for kind, values in self.parts:
            if kind == "bottom":
                (count,) = values
                if count > num_layers:
                    raise out_of_range(f"the bottom {count} layers")
                selected.update(range(count))
            elif kind == "index":
                (index,) = values
                if not -num_layers <= index < num_layers:
                    raise out_of_range(f"index {index}")
                selected.add(index % num_layers)
            else:
                start, stop, step = values
                for bound in (start, stop):
                    if bound is not None and not -num_layers <= bound <= num_layers:
                        raise out_of_range(f"slice bound {bound}")
                selected.update(range(num_layers)[slice(start, stop, step)])
        if not selected and self.text not in ("0", "0:0"):
            raise LayerRangeError(
                f"`freeze_layers`={self.text!r} selects no layer of {stack}, which has {num_layers} layers "
                f"(valid indexes 0..{num_layers - 1}). Use e.g. ':{num_layers}' or 'all'."
            )
        return sorted(selected)

    def __str__(self) -> str:
        return self.text


def _read(text: str) -> tuple[tuple[str, tuple[int | None, ...]], ...]:
    """The parts of a ``freeze_layers`` text; raises :class:`LayerRangeError` on bad syntax."""
    if text.lower() == "all":
        return (("slice", (None, None, None)),)
    parts: list[tuple[str, tuple[int | None, ...]]] = []
    chunks = text.split(",")
    for chunk in chunks:
        index = _INDEX.match(chunk)
        if index:
            value = int(index.group(1))
            if len(chunks) == 1:  # a lone number means "the bottom n", like the int form
                if value < 0:
                    raise LayerRangeError(
                        f"`freeze_layers`={text!r}: a single number freezes the bottom n layers and "
                        f"cannot be negative; write '{value}:' for the top {-value} layers."
                    )
                parts.append(("bottom", (value,)))
            else:
                parts.append(("index", (value,)))
            continue
        sliced = _SLICE.match(chunk)
        if not sliced:
            raise LayerRangeError(f"`freeze_layers`={text!r}: cannot read {chunk.strip()!r}. Use {_VALID}.")
        start, stop, step = (int(g) if g is not None else None for g in sliced.groups())
        if step == 0:
            raise LayerRangeError(f"`freeze_layers`={text!r}: a slice step cannot be zero.")
        parts.append(("slice", (start, stop, step)))
    return tuple(parts)
