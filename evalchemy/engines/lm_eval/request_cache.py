"""lm-eval's request cache (``--use_cache``, one SQLite file per run and model) read and written in bulk.

lm-eval's ``CachingLM`` asks the cache about each request with two queries and writes each answer back as its own
transaction, every one a round trip through sqlitedict's writer thread that the caller waits for: with 50,000
requests that was 8 s before the first request went out and 16 s after the last answer came, measured here.
``BulkCachingLM`` does the same in statements of ``ROWS`` keys: the same keys (``hash_args``), the same values
(sqlitedict's pickles), the same rule for sampled generations (asked again, never answered from the cache), the same
log lines, and lm-eval's blocking commit at the end. ``install()`` puts it where ``simple_evaluate`` looks for
``CachingLM`` (``lm_eval.api.model``), so every client in the worker gets it.

``write_rows`` is also how the lean client puts a request's answers in the cache as they come
(evalchemy/engines/lm_eval/fast_client.py).
"""

from __future__ import annotations

import logging
import os

from lm_eval.api import model as lm_model
from lm_eval.api.model import CachingLM, hash_args

ROWS = 400  # keys per statement: two SQL variables per row written, under SQLite's oldest limit (999)
CACHED_METHODS = ("loglikelihood", "loglikelihood_rolling", "generate_until")
eval_logger = logging.getLogger(lm_model.__name__)  # CachingLM's own logger: its lines, in the same place


def write_rows(dbdict, rows: dict) -> None:
    """``{key: answer}`` into the cache as ``dbdict[key] = answer`` would write them, ``ROWS`` a statement, queued to
    the cache's writer thread without waiting (``dbdict.commit()`` waits for them)."""
    items = list(rows.items())
    for start in range(0, len(items), ROWS):
        chunk = items[start:start + ROWS]
        values = [value for key, answer in chunk for value in (dbdict.encode_key(key), dbdict.encode(answer))]
        dbdict.conn.execute(f'REPLACE INTO "{dbdict.tablename}" (key, value) VALUES '
                            + ", ".join(["(?, ?)"] * len(chunk)), values)


def read_rows(dbdict, keys) -> dict:
    """``{key: answer}`` for the keys the cache holds, ``ROWS`` keys a query."""
    found = {}
    wanted = list(dict.fromkeys(keys))
    for start in range(0, len(wanted), ROWS):
        encoded = {dbdict.encode_key(key): key for key in wanted[start:start + ROWS]}
        query = f'SELECT key, value FROM "{dbdict.tablename}" WHERE key IN ({", ".join("?" * len(encoded))})'
        for key, value in dbdict.conn.select(query, tuple(encoded)):
            found[encoded[key]] = dbdict.decode(value)
    return found


class BulkCachingLM(CachingLM):
    """lm-eval's ``CachingLM`` with its lookups and its writes in statements of many rows (see the module)."""

    def __init__(self, lm, cache_db: str) -> None:
        from sqlitedict import SqliteDict

        self.lm = lm
        self.cache_db = cache_db
        if os.path.dirname(cache_db):
            os.makedirs(os.path.dirname(cache_db), exist_ok=True)
        # as lm-eval's, less the call stack sqlitedict records with every statement it queues (for its error
        # messages): ~1 KB and a stack walk per statement
        self.dbdict = SqliteDict(cache_db, autocommit=True, outer_stack=False)
        lm.set_cache_hook(self.get_cache_hook())

    def __getattr__(self, attr: str):
        lm_attr = getattr(self.lm, attr)
        if attr not in CACHED_METHODS:
            return lm_attr

        def cached(requests):
            eval_logger.info(f"Loading '{attr}' responses from cache '{self.cache_db}' where possible...")
            keys = [hash_args(attr, req.args) for req in requests]
            sampled = [attr == "generate_until" and bool(req.args[1].get("do_sample", False)) for req in requests]
            if any(sampled):
                first = requests[sampled.index(True)]
                eval_logger.warning(f"Arguments to lm.generate_until() '{first.args[1]}' include non-deterministic "
                                    "sampling. Caching will not be performed for such requests.")
            found = read_rows(self.dbdict, [key for key, fresh in zip(keys, sampled, strict=True) if not fresh])
            answers = [None if fresh else found.get(key) for key, fresh in zip(keys, sampled, strict=True)]
            remaining = [i for i, answer in enumerate(answers) if answer is None]
            eval_logger.info(f"Cached requests: {len(requests) - len(remaining)}, "
                             f"Requests remaining: {len(remaining)}")
            new = getattr(self.lm, attr)([requests[i] for i in remaining]) if remaining else []
            for i, answer in zip(remaining, new, strict=True):
                answers[i] = answer
            write_rows(self.dbdict, {keys[i]: answers[i] for i in remaining})
            self.dbdict.commit()
            return answers

        return cached


def install() -> None:
    """Make ``simple_evaluate(use_cache=...)`` wrap the model in ``BulkCachingLM``."""
    lm_model.CachingLM = BulkCachingLM
