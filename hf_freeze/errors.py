"""The errors hf-freeze raises.

Every class subclasses ``ValueError`` (bad input is a value problem), so ``except ValueError`` keeps
working for callers that do not know this library. Each message names the option, the bad value
and what would be valid.
"""

from __future__ import annotations


class FreezeError(ValueError):
    """Base class of every hf-freeze error."""


class InvalidOptionError(FreezeError):
    """An option has a value of the wrong type or outside its allowed set."""


class InvalidPatternError(FreezeError):
    """A ``freeze`` / ``unfreeze`` pattern is not a valid Python regular expression."""


class PatternNotFoundError(FreezeError):
    """A pattern matched no parameter while ``freeze_strict`` is on."""


class LayerRangeError(FreezeError):
    """``freeze_layers`` has bad syntax, or an index or slice bound outside the layer stack."""


class LayerStackNotFoundError(FreezeError):
    """No layer stack was found (or the one named by ``layer_stack`` does not exist)."""


class SharedLayersError(FreezeError):
    """``freeze_layers`` asks for a range that shares its parameters with layers outside it (ALBERT)."""


class TiedWeightsConflictError(FreezeError):
    """One tensor reachable under two names is asked to be frozen under one and trained under the other."""


class NoTrainableParametersError(FreezeError):
    """The plan leaves nothing to train."""


class UnsavedTrainableError(FreezeError):
    """A PEFT model would train a parameter its adapter does not save (outside the adapter and ``modules_to_save``)."""


class PlanMismatchError(FreezeError):
    """A saved plan does not fit the model or options it is applied to."""


class ModelLoadError(FreezeError):
    """``hf-freeze inspect`` could not read the model's config (no such path, offline Hub id, bad file)."""


class PartialCheckpointError(FreezeError):
    """A partial checkpoint folder lacks a file, holds a truncated or corrupt one, or is not one."""


class FeatureCacheError(FreezeError):
    """``cache_frozen_features`` cannot apply: the frozen parameters do not form a prefix the cache can skip."""
