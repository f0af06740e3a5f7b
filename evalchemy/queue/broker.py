"""The Celery application: Redis as the broker, one task (``evalchemy.run``) acknowledged late, so a worker that
dies mid-run (kill -9, reboot) leaves the run on the queue for another worker. No result backend: the store holds
every run's state."""

from __future__ import annotations

import os

from evalchemy.errors import PreflightError, UsageError, setting
from evalchemy.redaction import redact_url

BROKER_ENV = "EVALCHEMY_BROKER"
DEFAULT_QUEUE = "evalchemy"
TASK = "evalchemy.run"
# an unacknowledged message goes back on the queue after this long (a dead worker's run is redelivered then)
VISIBILITY_ENV = "EVALCHEMY_QUEUE_VISIBILITY_S"
DEFAULT_VISIBILITY_S = 300


def broker_url(value: str | None) -> str:
    chosen = value or os.environ.get(BROKER_ENV)
    if not chosen:
        raise UsageError(f"no broker: pass {setting('broker')} redis://HOST:6379/0 or set EVALCHEMY_BROKER")
    if not chosen.startswith(("redis://", "rediss://")):
        raise UsageError(f"{setting('broker')} {display(chosen)}: not a Redis URL; use redis://HOST:6379/0")
    return chosen


display = redact_url  # the URL without its password (redis://:PASSWORD@host), for messages (one redactor)


def make_app(url: str):
    from celery import Celery

    app = Celery("evalchemy", broker=url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": float(os.environ.get(VISIBILITY_ENV, DEFAULT_VISIBILITY_S))},
        task_serializer="json",
        accept_content=["json"],
    )

    @app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    def run_task(self, **payload):
        from evalchemy.queue import work

        if work.handle(payload) == work.BUSY:  # held by a live worker: look again later, never drop it
            raise self.retry(countdown=work.settings().retry_s, max_retries=None)

    return app


def check_reachable(app, url: str) -> None:
    """Nothing is queued when the broker does not answer: one quick connection, not Celery's long retries."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=5)
    except Exception as err:  # noqa: BLE001 - kombu raises the transport's own errors
        raise PreflightError(f"broker {display(url)} cannot be reached ({type(err).__name__}: {err}): start "
                             f"redis-server there or fix {setting('broker')} / EVALCHEMY_BROKER; nothing was "
                             "queued") from None


def publish(app, url: str, payload: dict, queue: str) -> None:
    try:
        app.send_task(TASK, kwargs=payload, queue=queue, task_id=payload["run_id"],
                      retry=True, retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 0.5})
    except Exception as err:  # noqa: BLE001
        raise PreflightError(f"broker {display(url)}: the run could not be queued ({type(err).__name__}: {err}); "
                             "nothing was queued") from None
