"""What a PEFT model saves, and the check that a plan trains nothing it will not save.

``save_model`` of a PEFT model (a ``PeftModel``, or a transformers model with an adapter loaded)
writes only the adapter: the tuner weights, the ``modules_to_save`` copies, trainable tokens and
prompt encoders. A parameter that trains outside them is trained and then lost without a word, so
the plan refuses it before any training work. Which parameters PEFT saves is asked of PEFT itself
(``get_peft_model_state_dict`` over the model's own parameter objects), never guessed from names.

Example:
    >>> check_saved(peft_model, plan.trainable_names)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..errors import UnsavedTrainableError

_ORIGINAL_COPY = ".original_module."


def _peft_root(model: nn.Module) -> nn.Module | None:
    """The module that holds ``peft_config`` (the model itself for both PEFT flavours), or None."""
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict) and config:
        return model
    return None


def is_peft_model(model: nn.Module) -> bool:
    """True for a ``PeftModel`` and for a transformers model with a PEFT adapter loaded."""
    return _peft_root(model) is not None


def peft_saved_names(model: nn.Module) -> set[str] | None:
    """Names (as ``named_parameters()`` gives them) of the parameters PEFT writes when the model is saved.

    None when ``model`` is not a PEFT model. Every adapter of the model counts (``save_pretrained``
    writes them all).
    """
    root = _peft_root(model)
    if root is None:
        return None
    from peft import get_peft_model_state_dict

    state = root.state_dict(keep_vars=True)  # the Parameter objects themselves, so identity maps back to names
    saved_ids: set[int] = set()
    for adapter in root.peft_config:
        # save_embedding_layers=False: "auto" may query the Hub; targeted embeddings are added below.
        written = get_peft_model_state_dict(root, state_dict=state, adapter_name=adapter, save_embedding_layers=False)
        saved_ids.update(id(value) for value in written.values())
    names = set()
    for name, param in root.named_parameters(remove_duplicate=False):
        if id(param) in saved_ids or name.startswith("prompt_encoder.") or ".prompt_encoder." in name:
            names.add(name)
    names |= _targeted_embedding_names(root)
    return names


def _targeted_embedding_names(root: nn.Module) -> set[str]:
    """Parameters of an input/output embedding that an adapter wraps: PEFT saves that whole layer."""
    found: set[str] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        method = getattr(root, getter, None)
        try:
            layer = method() if callable(method) else None
        except (AttributeError, NotImplementedError):
            layer = None
        base = getattr(layer, "base_layer", None)
        if isinstance(base, (nn.Embedding, nn.Linear)):
            for path, module in root.named_modules():
                if module is base:
                    found.update(f"{path}.{n}" for n, _ in base.named_parameters())
    return found


def unsaved_trainable(model: nn.Module, trainable: Iterable[str]) -> list[str]:
    """Names in ``trainable`` that saving ``model`` would not write (always empty for a non-PEFT model)."""
    saved = peft_saved_names(model)
    if saved is None:
        return []
    return sorted(name for name in trainable if name not in saved)


def unsaved_warning(names: list[str]) -> str:
    """The warning for a run without freezing options whose PEFT model trains ``names`` but will not save them
    (with freezing options :func:`check_saved` refuses this instead)."""
    return (
        f"{len(names)} trainable parameter(s) are outside the PEFT adapter and `modules_to_save`, so save_model "
        f"will not write them and their training will be lost: {names[:5]}. Add their modules to "
        "`modules_to_save` in the PEFT config, or set requires_grad=False on them."
    )


def _module_to_save(name: str) -> str:
    """The module path PEFT's ``modules_to_save`` would take for a parameter (PEFT's own prefix removed)."""
    module = name.rpartition(".")[0]
    return module.removeprefix("base_model.model.").removeprefix("base_model.")


def check_saved(model: nn.Module, trainable: Iterable[str]) -> None:
    """Raise :class:`UnsavedTrainableError` when a PEFT model would train a parameter it does not save.

    Called by :meth:`FreezeSpec.resolve` for every plan that sets a rule, and by ``FreezingTrainer``
    for the parameters gradual unfreezing will bring back.
    """
    lost = unsaved_trainable(model, trainable)
    if not lost:
        return
    copies = [n for n in lost if _ORIGINAL_COPY in f".{n}."]
    modules = sorted({_module_to_save(n) for n in lost if n not in copies})
    message = (
        f"{len(lost)} parameter(s) of {type(model).__name__} would train but PEFT does not save them (it writes "
        f"only the adapter and `modules_to_save`), so that training would be lost: {lost[:5]}."
    )
    if modules:
        message += (
            f" To train them, add their modules to the PEFT config: `modules_to_save={modules}`; otherwise "
            "narrow the `unfreeze` pattern (or set requires_grad=False on them) so they stay frozen."
        )
    if copies:
        message += (
            f" {copies[:3]} are the unused original copies PEFT keeps of modules in `modules_to_save`: narrow "
            "the `unfreeze` pattern to the trained copy (e.g. 'classifier.modules_to_save')."
        )
    raise UnsavedTrainableError(message)
