"""hf-freeze: correct, fast and easy partial fine-tuning of Hugging Face models."""

from .core.api import freeze_model
from .core.matching import compile_pattern, matches
from .core.plan import PLAN_FILE, FreezePlan, ParamDecision
from .core.spec import FreezeSpec
from .errors import (
    FreezeError,
    InvalidOptionError,
    InvalidPatternError,
    LayerRangeError,
    LayerStackNotFoundError,
    ModelLoadError,
    NoTrainableParametersError,
    PartialCheckpointError,
    PatternNotFoundError,
    PlanMismatchError,
    SharedLayersError,
    TiedWeightsConflictError,
    UnsavedTrainableError,
)

__version__ = "0.1.0"

# The Trainer side imports transformers; load it on first use so the core stays light.
_LAZY = {
    "FreezingTrainer": "training.trainer",
    "FreezingTrainingArguments": "training.arguments",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PLAN_FILE",
    "FreezeError",
    "FreezePlan",
    "FreezeSpec",
    "FreezingTrainer",
    "FreezingTrainingArguments",
    "InvalidOptionError",
    "InvalidPatternError",
    "LayerRangeError",
    "LayerStackNotFoundError",
    "ModelLoadError",
    "NoTrainableParametersError",
    "ParamDecision",
    "PartialCheckpointError",
    "PatternNotFoundError",
    "PlanMismatchError",
    "SharedLayersError",
    "TiedWeightsConflictError",
    "UnsavedTrainableError",
    "compile_pattern",
    "freeze_model",
    "matches",
]
