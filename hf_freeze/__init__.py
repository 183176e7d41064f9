"""hf-freeze: correct, fast and easy partial fine-tuning of Hugging Face models."""

from typing import TYPE_CHECKING, Any

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

# Loaded on first use (PEP 562), so that `import hf_freeze` imports neither torch nor transformers: the
# core needs torch only to resolve a plan, the Trainer side and the parser need transformers.
_LAZY = {
    "FreezePlan": "core.plan",
    "ParamDecision": "core.param_decision",
    "PLAN_FILE": "core.plan",
    "FreezeSpec": "core.spec",
    "freeze_model": "core.api",
    "compile_pattern": "core.matching",
    "matches": "core.matching",
    "FreezingTrainer": "training.trainer",
    "FreezingTrainingArguments": "training.arguments",
    "FreezingArgumentParser": "parsing",
}

if TYPE_CHECKING:
    from .core.api import freeze_model
    from .core.matching import compile_pattern, matches
    from .core.param_decision import ParamDecision
    from .core.plan import PLAN_FILE, FreezePlan
    from .core.spec import FreezeSpec
    from .parsing import FreezingArgumentParser
    from .training.arguments import FreezingTrainingArguments
    from .training.trainer import FreezingTrainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "PLAN_FILE",
    "FreezeError",
    "FreezePlan",
    "FreezeSpec",
    "FreezingArgumentParser",
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
