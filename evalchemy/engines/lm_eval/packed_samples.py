"""lm-eval's logged samples kept on disk while lm-eval builds them.

The worker always asks lm-eval for its samples (the per-question score files are made from them). lm-eval's
``evaluate`` builds one dict per question and filter (the document again, three hashes, the arguments, answers and
metrics) and keeps them all until it returns, while every request is still alive: +76 MB for 50,000 one-word samples
measured here, about 1.5 KB of Python objects each. ``PackedSamples`` writes each sample, pickled, to a temporary
file as it is appended (about 0.6 KB of disk; 8 bytes of memory) and unpickles it, a fresh equal dict, each time it
is read: the stats, the score files and lm-eval's samples files read what they read before.

lm-eval creates that list inside ``evaluate`` and takes no other. ``install()`` swaps it in the one call ``evaluate``
makes on each task just before building the task's samples, ``task.apply_filters()``: the caller's ``acc`` (the
task's accumulator, ``{"task", "raw_metrics", "logged_samples"}``) must be ``evaluate``'s in ``lm_eval.evaluator``,
for this task, with an empty list; anything else keeps lm-eval's list untouched. tests/test_packed_samples.py checks
that the swap happens with the lm-eval this project pins, so an upgrade that changes ``evaluate`` fails a test rather
than quietly costing memory.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
import tempfile
from array import array
from collections.abc import Sequence

spill_folder: str | None = None  # where PackedSamples' files go (the worker sets the job's run folder); None: $TMPDIR


class PackedSamples(Sequence):
    """A list of samples kept on disk: each is pickled into an unnamed temporary file in ``spill_folder`` (deleted
    when closed, or when the process ends) as it is appended, and read back, a fresh equal object, each time it is
    read. The process holds 8 bytes per sample; a sample that cannot be pickled is held as is."""

    def __init__(self, samples=()) -> None:
        self._file = tempfile.TemporaryFile(dir=spill_folder)
        self._ends = array("q")  # where each sample's bytes end in the file
        self._unpickled: dict[int, object] = {}
        self._flushed = True
        for sample in samples:
            self.append(sample)

    def append(self, sample) -> None:
        try:
            blob = pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - whatever pickle refuses is kept as the object itself
            self._unpickled[len(self._ends)] = sample
            blob = b""
        self._file.write(blob)
        self._ends.append((self._ends[-1] if self._ends else 0) + len(blob))
        self._flushed = False

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._read(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("sample index out of range")
        return self._read(index)

    def __iter__(self):
        for index in range(len(self)):
            yield self._read(index)

    def _read(self, index: int):
        if index in self._unpickled:
            return self._unpickled[index]
        if not self._flushed:
            self._file.flush()
            self._flushed = True
        start = self._ends[index - 1] if index else 0
        return pickle.loads(os.pread(self._file.fileno(), self._ends[index] - start, start))

    def __repr__(self) -> str:
        return f"PackedSamples({len(self)} samples)"


def swap_in(acc, task) -> bool:
    """Replace the accumulator's empty sample list by a ``PackedSamples``, when ``acc`` is that accumulator."""
    if isinstance(acc, dict) and acc.get("task") is task and "raw_metrics" in acc \
            and type(acc.get("logged_samples")) is list and not acc["logged_samples"]:
        acc["logged_samples"] = PackedSamples()
        return True
    return False


def install() -> None:
    """Wrap ``ConfigurableTask.apply_filters`` (every task lm-eval builds from YAML) to swap the list (see the module)."""
    from lm_eval.api.task import ConfigurableTask

    original = ConfigurableTask.apply_filters
    if getattr(original, "evalchemy_packing", False):
        return

    @functools.wraps(original)
    def apply_filters(self, *args, **kwargs):
        caller = sys._getframe(1)
        if caller.f_code.co_name == "evaluate" and caller.f_globals.get("__name__") == "lm_eval.evaluator":
            swap_in(caller.f_locals.get("acc"), self)
        return original(self, *args, **kwargs)

    apply_filters.evalchemy_packing = True
    ConfigurableTask.apply_filters = apply_filters
