"""Request accounting in the lm-eval worker (evalchemy/accounting.py): the counters file the runner reads after
the worker's death, and the progress lines that stand in for progress bars."""

from __future__ import annotations

import logging

from evalchemy.engines.lm_eval import accounting
from evalchemy.engines.lm_eval.accounting import Counters, RequestStats


def test_counters_file_holds_every_change_for_another_reader():
    """Each count is in the counters file as soon as it changes, through a second descriptor (as the runner reads
    what the worker wrote); reset zeroes it."""
    runner_side = Counters()
    stats = RequestStats(Counters(runner_side.fd))

    def answer(prompts):
        return [None, "", "  ", "Paris"][:prompts]

    def refused():
        raise ConnectionRefusedError

    stats.counting(answer)(3)
    stats.counting_answers(answer)(4)
    try:
        stats.counting(refused)()
    except ConnectionRefusedError:
        pass
    assert runner_side.read() == {"sent": 2, "failed_attempts": 1, "empty_answers": 3, "truncated_prompts": 0,
                                  "answers": 4, "null_answers": 1}
    runner_side.reset()
    assert runner_side.read() == dict.fromkeys(accounting.COUNTS, 0)


def test_progress_lines_now_and_then(monkeypatch, caplog):
    """A progress line in the log at most every PROGRESS_EVERY_S seconds of sending."""
    monkeypatch.setattr(accounting, "PROGRESS_EVERY_S", 0.0)
    stats = RequestStats()
    send = stats.counting(lambda: None)
    with caplog.at_level(logging.INFO, logger="evalchemy.engines.lm_eval.worker"):
        send()
        send()
        monkeypatch.setattr(accounting, "PROGRESS_EVERY_S", 3600.0)
        send()
    assert [r.getMessage() for r in caplog.records] == [
        "progress: 1 request(s) sent, 0 failed attempt(s), 0 empty answer(s)",
        "progress: 2 request(s) sent, 0 failed attempt(s), 0 empty answer(s)"]
