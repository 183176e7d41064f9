"""The ``hf-freeze`` command line (``hf-freeze inspect``)."""

from .main import main

__all__ = ["main"]
