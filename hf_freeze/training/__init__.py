"""The ``transformers.Trainer`` integration: arguments, the trainer, optimizer groups, gradual
unfreezing and the backend checks. Imported on first use of ``hf_freeze.FreezingTrainer``."""
