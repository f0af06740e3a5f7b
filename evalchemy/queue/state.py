"""Queued runs in the store (table ``queue_runs``): submitted (PENDING), claimed by one worker (STARTED, with
host, pid and a heartbeat), ended (SUCCESS, FAILURE, REVOKED). A claim is one atomic UPDATE, so two workers that
get the same message (a redelivery) never run it at the same time; a claim whose worker is dead (heartbeat older
than ``stale_s``, or same host and its pid gone) is taken over."""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone

import sqlalchemy as sa

from evalchemy.errors import StoreError, setting
from evalchemy.store import db, record
from evalchemy.store.schema import queue_runs as table

PENDING, STARTED, SUCCESS, FAILURE, REVOKED = "PENDING", "STARTED", "SUCCESS", "FAILURE", "REVOKED"
ENDED = (SUCCESS, FAILURE, REVOKED)
FIELDS = ("run_id", "state", "host", "status", "exit_code", "submitted_at", "started_at", "finished_at")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def host_name() -> str:
    return socket.gethostname()


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """The queue's view of one store URL; every failure to reach it is a StoreError."""

    def __init__(self, url: str):
        self.url = url
        self.engine = None

    def _engine(self):
        if self.engine is None:
            self.engine = record.open_for_writing(self.url)
        return self.engine

    def _do(self, work):
        try:
            with self._engine().begin() as connection:
                return work(connection)
        except sa.exc.SQLAlchemyError as err:
            if self.engine is not None:
                self.engine.dispose()
                self.engine = None
            raise db.unreachable(self.url, err) from None

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    # -- submit / read ------------------------------------------------------------------------------------------

    def add(self, run_id: str, queue: str) -> None:
        def work(connection):
            existing = connection.execute(sa.select(table.c.state).where(table.c.run_id == run_id)).first()
            if existing is not None:
                raise StoreError(f"run id {run_id} was already submitted (state {existing.state}): pick another "
                                 f"{setting('run-id')}, or leave it out for a new one")
            connection.execute(sa.insert(table).values(run_id=run_id, queue=queue, state=PENDING,
                                                       submitted_at=now_iso()))
        self._do(work)

    def remove(self, run_id: str) -> None:
        self._do(lambda c: c.execute(sa.delete(table).where(table.c.run_id == run_id)))

    def rows(self, run_ids: tuple[str, ...] = (), states: tuple[str, ...] = ()) -> list[dict]:
        def work(connection):
            query = sa.select(table).order_by(table.c.submitted_at, table.c.run_id)
            if run_ids:
                query = query.where(table.c.run_id.in_(run_ids))
            if states:
                query = query.where(table.c.state.in_(states))
            return [dict(r._mapping) for r in connection.execute(query)]
        return self._do(work)

    def get(self, run_id: str) -> dict | None:
        found = self.rows((run_id,))
        return found[0] if found else None

    # -- worker -------------------------------------------------------------------------------------------------

    def claim(self, run_id: str, worker: str, stale_s: float) -> tuple[bool, dict | None]:
        """(True, row) when this process now holds the run; (False, row) when it is ended, cancelled or held by
        a live worker; (False, None) when the store does not know the run."""
        host, pid, now = host_name(), os.getpid(), time.time()

        def work(connection):
            row = connection.execute(sa.select(table).where(table.c.run_id == run_id)).first()
            if row is None:
                return False, None
            row = dict(row._mapping)
            if row["state"] == PENDING and row["cancel"]:
                connection.execute(sa.update(table).where(table.c.run_id == run_id, table.c.state == PENDING)
                                   .values(state=REVOKED, status="revoked", finished_at=now_iso()))
                return False, {**row, "state": REVOKED}
            taking = sa.and_(table.c.state == PENDING)
            if row["state"] == STARTED:
                dead_here = row["host"] == host and row["pid"] != pid and not pid_alive(row["pid"])
                if dead_here:
                    taking = sa.and_(table.c.state == STARTED, table.c.host == row["host"],
                                     table.c.pid == row["pid"])
                else:
                    taking = sa.and_(table.c.state == STARTED, table.c.heartbeat < now - stale_s)
            result = connection.execute(
                sa.update(table).where(table.c.run_id == run_id, taking)
                .values(state=STARTED, host=host, pid=pid, worker=worker, heartbeat=now,
                        attempts=table.c.attempts + 1, started_at=now_iso()))
            return result.rowcount == 1, row
        return self._do(work)

    def _mine(self, run_id: str):
        return sa.and_(table.c.run_id == run_id, table.c.state == STARTED, table.c.host == host_name(),
                       table.c.pid == os.getpid())

    def heartbeat(self, run_id: str) -> bool:
        """Refresh the claim; True when the run was asked to stop (cancel)."""
        def work(connection):
            connection.execute(sa.update(table).where(self._mine(run_id)).values(heartbeat=time.time()))
            row = connection.execute(sa.select(table.c.cancel).where(table.c.run_id == run_id)).first()
            return bool(row and row.cancel)
        return self._do(work)

    def finish(self, run_id: str, state: str, status: str | None, exit_code: int | None) -> None:
        self._do(lambda c: c.execute(sa.update(table).where(self._mine(run_id)).values(
            state=state, status=status, exit_code=exit_code, finished_at=now_iso(), heartbeat=time.time())))

    def cancel(self, run_id: str) -> dict:
        """Flag the run: a queued one is revoked here, a running one is stopped by its worker."""
        def work(connection):
            row = connection.execute(sa.select(table).where(table.c.run_id == run_id)).first()
            if row is None:
                raise StoreError(f"no submitted run {run_id} in {db.display(self.url)}: see `status`")
            connection.execute(sa.update(table).where(table.c.run_id == run_id).values(cancel=True))
            connection.execute(sa.update(table).where(table.c.run_id == run_id, table.c.state == PENDING)
                               .values(state=REVOKED, status="revoked", finished_at=now_iso()))
            return dict(connection.execute(sa.select(table).where(table.c.run_id == run_id)).first()._mapping)
        return self._do(work)


def public(row: dict) -> dict:
    """What ``status --json`` prints for a row: ``status`` is null until the run ends."""
    shown = {key: row.get(key) for key in FIELDS}
    if row["state"] not in ENDED:
        shown["status"] = None
        shown["exit_code"] = None
    return shown
