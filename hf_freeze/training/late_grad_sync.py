"""Average the gradients of parameters unfrozen after the DDP wrap, as DDP averages the others.

``DistributedDataParallel`` builds its gradient buckets from the parameters that require grad when it
wraps the model; a parameter made trainable later gets a local gradient that DDP never all-reduces,
so replicas silently drift apart (see the README's gradual-unfreezing section). Re-wrapping would
restart the training loop, and making everything trainable at wrap time would all-reduce every
frozen parameter on every step. Instead, :class:`LateGradSync` all-reduces exactly the late
parameters, once per optimizer step:

- a post-accumulate-grad hook on every trainable parameter notes that a backward pass is running
  and, on a step that synchronises gradients (the last micro-batch of an accumulation cycle, where
  DDP also all-reduces), queues one callback at the end of that backward pass;
- the callback flattens the late parameters' gradients in a fixed order (a missing gradient counts
  as zeros, as DDP's ``find_unused_parameters`` does), all-reduces them in one collective, divides by
  the world size and writes them back, before ``Trainer`` clips the gradient norm.

So every replica holds identical gradients before clipping and the optimizer step, and the bytes sent
per step are the late parameters' bytes on top of DDP's own buckets. ``should_sync`` says whether the
current micro-batch synchronises (``Trainer`` sets accelerate's ``GradientState.sync_gradients``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Variable


def accelerate_sync_flag() -> bool:
    """True when the current micro-batch ends an accumulation cycle (accelerate's gradient state)."""
    from accelerate.state import GradientState

    return GradientState().sync_gradients


class LateGradSync:
    """All-reduce the gradients of ``late`` parameters at the end of every synchronising backward pass.

    Example:
        >>> sync = LateGradSync(should_sync=accelerate_sync_flag)          # doctest: +SKIP
        >>> sync.add(model.named_parameters(), names_unfrozen_now)          # doctest: +SKIP
        >>> ...                                                             # doctest: +SKIP
        >>> sync.remove()                                                   # at the end of training
    """

    def __init__(self, should_sync: Callable[[], bool] = accelerate_sync_flag, group: dist.ProcessGroup | None = None):
        self.should_sync = should_sync
        self.group = group
        self.late: list[tuple[str, nn.Parameter]] = []
        self._hooked: set[int] = set()
        self._handles: list = []
        self._queued = False
        self.syncs = 0
        self.bytes_sent = 0

    @property
    def bytes_per_sync(self) -> int:
        """Bytes all-reduced per optimizer step for the late parameters."""
        return sum(p.numel() * p.element_size() for _, p in self.late)

    def add(self, named_parameters: Iterable[tuple[str, nn.Parameter]], names: Iterable[str]) -> None:
        """Sync ``names`` from now on; hook every trainable parameter so each backward pass is seen."""
        wanted = set(names)
        params = list(named_parameters)
        known = {id(p) for _, p in self.late}
        self.late.extend((n, p) for n, p in params if n in wanted and id(p) not in known)
        self.late.sort(key=lambda item: item[0])  # the same order on every rank
        for _, param in params:
            if param.requires_grad and id(param) not in self._hooked:
                self._hooked.add(id(param))
                self._handles.append(param.register_post_accumulate_grad_hook(self._on_grad))

    def remove(self) -> None:
        """Drop every hook (end of training); the object can be reused with :meth:`add`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._hooked.clear()
        self.late.clear()

    def _on_grad(self, _param: torch.Tensor) -> None:
        if self._queued or not self.late or not self.should_sync():
            return
        self._queued = True
        Variable._execution_engine.queue_callback(self._all_reduce)

    def _all_reduce(self) -> None:
        self._queued = False
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for _, param in self.late:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
        world = dist.get_world_size(self.group)
        for grads in by_dtype.values():  # one collective per dtype, in the same order on every rank
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=self.group)
            flat.div_(world)
            offset = 0
            for grad in grads:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()
            self.bytes_sent += flat.numel() * flat.element_size()
        self.syncs += 1
