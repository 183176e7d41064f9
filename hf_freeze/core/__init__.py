"""The framework-free core: options -> :class:`FreezeSpec` -> :class:`FreezePlan` (resolved against a
model) -> applied, reported and saved. Nothing here imports ``transformers.Trainer``."""
