"""What a static plan cannot see about a cached prefix, checked once on its first real forward.

:class:`PrefixCheck` watches the entry module and the prefix layers run once (with grad enabled) and
refuses, with a :class:`FeatureCacheError`, a prefix the cache could not skip exactly: hidden states
changed between two prefix modules by code outside them (ELECTRA's embedding projection), a layer with
side outputs the suffix may need, or a trainable parameter that feeds the prefix's output (found in the
autograd graph). It also records how each layer returns its hidden states, to rebuild that on a hit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import FeatureCacheError
from .frozen_prefix import OPTION, FrozenPrefix


class PrefixCheck:
    """The first-forward checks of one prefix; ``formats[i]`` rebuilds layer i's output from hidden states."""

    def __init__(self, model: nn.Module, prefix: FrozenPrefix) -> None:
        self.model, self.prefix = model, prefix
        self.formats: list[Callable[[torch.Tensor], Any]] = []
        self.done = False
        self._trace: list[tuple[str, Any]] = []

    def saw_entry(self, out: Any) -> None:
        self._trace = [(self.prefix.entry, out)]

    def saw_layer(self, index: int, hidden: Any, out: Any) -> None:
        """Layer ``index`` got ``hidden`` and returned ``out``; after the last layer the check is ``done``."""
        path = self.prefix.layer_paths[index]
        previous, previous_out = self._trace[-1] if self._trace else (None, None)
        if previous is None or hidden is not previous_out:
            where = f"between {previous} and {path}" if previous else f"before {path}"
            raise FeatureCacheError(
                f"{OPTION}: the hidden states are changed {where} by code outside those modules (a projection, "
                f"scaling or extra layer), so the stack of {type(self.model).__name__} cannot be entered at layer "
                f"{self.prefix.num_layers}. Set cache_frozen_features=False for this model."
            )
        self.formats.append(_output_format(path, out))
        result = hidden_of(out)
        self._trace.append((path, result))
        if index == self.prefix.num_layers - 1:
            if result.requires_grad:
                names = _params_feeding(result, self.model)
                raise FeatureCacheError(
                    f"{OPTION}: the cached prefix (embeddings and layers 0-{index} of {self.prefix.stack}) uses "
                    f"trainable parameter(s) {names[:3]}, so its output changes during training. Freeze them "
                    "(`freeze` patterns) or set cache_frozen_features=False."
                )
            self.done, self._trace = True, []


def hidden_of(out: Any) -> torch.Tensor:
    """A layer's hidden states: the output itself, or the first item of the tuple it returns."""
    return out if isinstance(out, torch.Tensor) else out[0]


def _output_format(path: str, out: Any) -> Callable[[torch.Tensor], Any]:
    """How a layer returns its hidden states (a tensor, or a tuple led by it), to rebuild on a hit."""
    if isinstance(out, torch.Tensor):
        return lambda hidden: hidden
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor) and all(o is None for o in out[1:]):
        rest = (None,) * (len(out) - 1)
        return lambda hidden: (hidden, *rest)
    raise FeatureCacheError(
        f"{OPTION}: {path} returns {type(out).__name__} with side outputs the suffix may need, which a skipped "
        "layer cannot reproduce. Set cache_frozen_features=False for this model."
    )


def _params_feeding(tensor: torch.Tensor, model: nn.Module) -> list[str]:
    """Names of the parameters the autograd graph of ``tensor`` reaches, in model order."""
    seen, stack, leaves = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    names = [name for name, param in model.named_parameters() if id(param) in leaves]
    return names or ["<an input that requires grad>"]
