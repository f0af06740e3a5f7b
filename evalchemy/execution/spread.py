"""One run over several endpoints of the same model (``--endpoint A --endpoint B``): the plan's benchmarks run in
parallel, one per endpoint at a time, each endpoint with its own lm-eval worker; records come back in the plan's
order, so the summary is the one a single endpoint would write. The runner calls this only when it is given more
than one endpoint; its one-endpoint loop is unchanged."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import replace

logger = logging.getLogger("evalchemy")


def run_spread(opts, plan, api_key, pres, make_worker, run_one, kept, events, records) -> None:
    """``pres``: one preflight per endpoint (the first is the run's). ``make_worker()`` starts an lm-eval worker;
    ``run_one(worker, pre, bench)`` runs one benchmark and returns its record. Appends to ``records`` in the plan's
    order; on an interruption stops every worker and re-raises."""
    to_run = plan.to_run
    todo: queue.Queue = queue.Queue()
    done: dict[str, object] = {}
    for bench in to_run:
        if bench.name in kept:
            done[bench.name] = kept[bench.name]
        else:
            todo.put(bench)
    workers = [make_worker() for _ in pres]
    errors: list[BaseException] = []

    def serve(worker, pre) -> None:
        while True:
            try:
                bench = todo.get_nowait()
            except queue.Empty:
                return
            logger.info("benchmark %s on %s", bench.name, pre.endpoint.display)
            try:
                done[bench.name] = run_one(worker, pre, bench)
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                errors.append(err)
                return

    threads = [threading.Thread(target=serve, args=(w, p), daemon=True) for w, p in zip(workers, pres)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)  # the main thread stays responsive to SIGINT / SIGTERM
    finally:
        for worker in workers:
            worker.stop()
        for bench in to_run:
            if bench.name in done:
                records.append(done[bench.name])
                events.benchmark_done(done[bench.name])
    if errors:
        raise errors[0]


def extra_preflights(opts, plan, api_key, endpoints, preflight, findings_type):
    return [preflight(replace(opts, endpoint=e), plan, api_key, findings=findings_type())
            for e in endpoints]
