"""Interleave several training runs step by step in one process, so machine drift hits all alike.

Each case runs its own, unmodified ``Trainer.train()`` (or loop) in a thread; a baton lets exactly one
of them run at a time. The main thread hands the baton out one step per case per round, reversing the
order every other round, so two cases compared in a round ran seconds apart, each first half the time.
Only the span between a step's begin and end is timed; prefetching the next batch, logging and the
hand-over happen outside it. Each case keeps its own global RNG state (dropout, shuffling), so a case
draws the same random numbers as it would alone, and two cases that should match can be compared
loss for loss.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Turn:
    """One case's side of the baton. The case calls :meth:`begin` and :meth:`end` around each step."""

    name: str
    baton: threading.Event
    go: threading.Event = field(default_factory=threading.Event)
    times: list[float] = field(default_factory=list)
    error: BaseException | None = None
    finished: bool = False
    _rng: torch.Tensor | None = None
    _start: float = 0.0

    def begin(self) -> None:
        """Hand the baton back, wait for this case's next turn, then start the clock."""
        self._rng = torch.get_rng_state()
        self.baton.set()
        self.go.wait()
        self.go.clear()
        torch.set_rng_state(self._rng)
        self._start = time.perf_counter()

    def end(self) -> None:
        self.times.append(time.perf_counter() - self._start)


def use_one_malloc_arena() -> bool:
    """Make worker threads allocate from glibc's main arena, as a single-threaded training process does.

    Otherwise each case's thread gets its own arena, which keeps its peak activations mapped (the ten
    MiniLM cases held 6.7 GB instead of 3.7) and allocates differently from a user's one-case process.
    Returns False where this is not glibc. Call it before the worker threads start.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, 1))  # M_ARENA_MAX = 1
    except (OSError, AttributeError):
        return False


class StepScheduler:
    """Run cases in lock step: ``add(name, run)`` each case, then ``run(rounds)``.

    ``run`` is called in a worker thread with the case's :class:`Turn` and must call ``turn.begin()``
    and ``turn.end()`` around each of exactly ``rounds`` steps.
    """

    def __init__(self, num_threads: int, timeout_s: float = 600.0):
        self.num_threads = num_threads
        self.timeout_s = timeout_s
        self._baton = threading.Event()
        self._all_done = threading.Event()
        self._cases: dict[str, tuple[Turn, Callable[[Turn], None]]] = {}

    def add(self, name: str, run: Callable[[Turn], None]) -> None:
        self._cases[name] = (Turn(name, self._baton), run)

    def _worker(self, turn: Turn, run: Callable[[Turn], None]) -> None:
        # OpenMP's thread count is per calling thread: set it in every worker alike.
        torch.set_num_threads(self.num_threads)
        try:
            run(turn)
        except BaseException as error:  # noqa: BLE001 - re-raised by the main thread
            turn.error = error
        finally:
            turn.finished = True
            self._baton.set()
        # A thread's exit tears down its OpenMP team; keep it parked until no case is timing any more.
        self._all_done.wait(self.timeout_s)

    def _wait(self, turn: Turn) -> None:
        if not self._baton.wait(self.timeout_s):
            raise TimeoutError(f"benchmark case {turn.name!r} did not finish a step within {self.timeout_s} s")
        self._baton.clear()
        if turn.error is not None:
            raise RuntimeError(f"benchmark case {turn.name!r} failed: {turn.error!r}") from turn.error

    def run(self, rounds: int) -> dict[str, list[float]]:
        """Return, per case, its step times in round order (one time per round)."""
        threads = []
        try:
            for turn, run in self._cases.values():
                # Start cases one at a time: each sets up alone and parks at its first step.
                thread = threading.Thread(target=self._worker, args=(turn, run), name=turn.name, daemon=True)
                thread.start()
                threads.append(thread)
                self._wait(turn)
            names = list(self._cases)
            for round_index in range(rounds):
                for name in names if round_index % 2 == 0 else reversed(names):
                    turn = self._cases[name][0]
                    if turn.finished:
                        raise RuntimeError(f"benchmark case {name!r} ended after {len(turn.times)} of {rounds} steps")
                    turn.go.set()
                    self._wait(turn)
        finally:
            self._all_done.set()
        for thread in threads:
            thread.join(self.timeout_s)
        for turn, _ in self._cases.values():
            if len(turn.times) != rounds:
                raise RuntimeError(f"benchmark case {turn.name!r} timed {len(turn.times)} of {rounds} steps")
        return {name: turn.times for name, (turn, _) in self._cases.items()}
