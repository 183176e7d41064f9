"""How every distributed test worker ends: rank 0 writes what all ranks report, then each rank leaves cleanly.

Why ``os._exit``: with gloo on CPU a rank sometimes aborts at interpreter exit (SIGABRT, "terminate called
without an active exception") after a clean run; a barrier, destroying the process group, flushing and
leaving without the interpreter's exit handlers avoids it (../shared notes on distributed CPU runs).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch.distributed as dist


def end_cleanly() -> None:
    """Barrier, destroy the process group (if one is up), flush, exit 0."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def gather_and_end(path: str, mine: Any) -> None:
    """Gather every rank's ``mine``; rank 0 writes the list (in rank order) as JSON to ``path``; end cleanly."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(gathered, handle)
    end_cleanly()
