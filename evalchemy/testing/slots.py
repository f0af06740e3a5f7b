"""The test server's capacity: sequence slots like vLLM's ``max_num_seqs``, on the model's clock."""

from __future__ import annotations

import threading
import time
from collections import deque


def prompt_count(body: dict) -> int:
    """Prompts in a completions request (the slots it takes): a list of strings or of token-id lists is several,
    anything else one."""
    prompt = body.get("prompt")
    return len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1


class Slots:
    """Sequence slots granted first come, first served (as vLLM's scheduler admits waiting requests); a request takes
    all the slots it needs at once or waits, so big requests cannot deadlock.

    Times are the modelled server's: slots a request gives back count as free from the moment its latency ended
    (``release(at=...)``), and the waiter they go to starts its latency then (``acquire`` returns that start). The
    test server's own Python time (a thread waking late, waiting for the interpreter lock) then does not eat into the
    capacity it models."""

    def __init__(self, size: int):
        self.size = size
        self.free = size
        self.peak = 0  # most slots taken at once
        self._lock = threading.Lock()
        self._waiting: deque[_Waiter] = deque()

    def acquire(self, wanted: int, closed: threading.Event) -> tuple[int, float] | None:
        """(slots taken, when the request's work starts), or None when the server stopped while it waited."""
        wanted = max(1, min(wanted, self.size))
        with self._lock:
            now = time.monotonic()
            if not self._waiting and self.free >= wanted:
                self._take(wanted)
                return wanted, now
            waiter = _Waiter(wanted, now)
            self._waiting.append(waiter)
        while not waiter.granted.wait(0.05):
            if closed.is_set():
                with self._lock:
                    if not waiter.granted.is_set():
                        self._waiting.remove(waiter)
                        self._grant(time.monotonic())  # the ones behind it may fit now
                        return None
        return wanted, waiter.start

    def release(self, taken: int, at: float) -> None:
        """Give back ``taken`` slots, free since ``at`` (monotonic time)."""
        with self._lock:
            self.free += taken
            self._grant(at)

    def _take(self, wanted: int) -> None:
        self.free -= wanted
        self.peak = max(self.peak, self.size - self.free)

    def _grant(self, at: float) -> None:
        while self._waiting and self._waiting[0].wanted <= self.free:
            waiter = self._waiting.popleft()
            self._take(waiter.wanted)
            waiter.start = max(at, waiter.arrived)
            waiter.granted.set()


class _Waiter:
    __slots__ = ("wanted", "arrived", "start", "granted")

    def __init__(self, wanted: int, arrived: float):
        self.wanted = wanted
        self.arrived = arrived
        self.start = arrived
        self.granted = threading.Event()
