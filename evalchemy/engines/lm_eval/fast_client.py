"""The lean completions client for vLLM-like servers: lm-eval model type ``evalchemy-completions``.

It is lm-eval's ``local-completions`` (``LocalCompletionsAPI``: same payloads, same batching, same retries, same
answer parsing, same request cache, so tasks, metrics, scores and sample files are unchanged) with the per-request
hot path rewritten: the payload is serialised and the answer parsed with orjson (a C parser; an echoed 600-token
answer with its top log-probabilities is most of the client's time in the stock client, which parses it with the
standard library through aiohttp), the generation arguments are copied only when there are any, answers go into
the request cache ``request_cache.ROWS`` at a time (one commit each, not one per prompt), and the log-likelihood
prompts are tokenized in one batch call per task (each shared context once).

One behaviour differs, on purpose: ``loglikelihood_rolling`` with more than one request in flight. The stock client
hands the request cache the rolling windows' empty keys and fails (``TypeError: 'NoneType' object is not iterable``);
this one skips them as lm-eval's one-request-at-a-time path does, and caches the whole text's answer like it.

Answers are parsed by the inherited ``parse_logprobs`` / ``parse_generations``, so the worker's checks on them
(``failures.install``: an echo answer without log-probabilities; ``accounting``: empty answers) apply unchanged.
``count_attempts`` wraps this class's request method with the worker's ``RequestStats`` like lm-eval's own.

Registered in lm-eval's model registry when this module is imported (the worker imports it). ``lm_eval run`` on the
command line does not import it: ``--dry-run`` prints the stock ``local-completions`` line, which gives the same
results (tests/test_fast_client.py compares both clients on the same server).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections import deque
from operator import itemgetter

import orjson
import simdjson
from lm_eval.api.model import hash_args
from lm_eval.api.registry import register_model
from lm_eval.models import api_models
from lm_eval.models.openai_completions import LocalCompletionsAPI
from lm_eval.models.utils import chunks

from evalchemy.engines.lm_eval import request_cache

MODEL_NAME = "evalchemy-completions"
eval_logger = logging.getLogger("lm_eval.models.api_models")  # lm-eval's own logger: same warnings, same place
_JSON_HEADERS = {"Content-Type": "application/json"}
ENCODE_CHUNK = 1024  # prompts tokenized per call when lm-eval hands over a whole task's
TASKS_PER_SLOT = 4  # request tasks alive at once per request in flight (--concurrency)


@register_model(MODEL_NAME)
class FastCompletionsAPI(LocalCompletionsAPI):
    """``local-completions`` with orjson on the wire (see the module's docstring)."""

    _memo: dict | None = None  # string -> token ids, filled in bulk by ``loglikelihood``
    _parser: simdjson.Parser | None = None  # reads echo answers lazily: see ``read_logprobs``
    _unsaved: dict | None = None  # cache key -> answer, not yet handed to the request cache: see ``_keep``

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        """lm-eval's, with every string it will tokenize (each context once, each context + continuation) encoded in
        one batch call of the same tokenizer first: the ids are the ones ``tok_encode`` gives one string at a
        time, without a Python round trip per string, and a question's shared context is encoded once, not once per
        choice."""
        if self.tokenizer_backend == "huggingface" and getattr(self, "backend", "causal") == "causal":
            wanted = {}
            for context, continuation in (req.args for req in requests):
                if context:
                    n_spaces = len(context) - len(context.rstrip())  # as lm-eval's _encode_pair
                    if n_spaces:
                        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
                    wanted[context] = wanted[context + continuation] = None
            if wanted:
                strings = list(wanted)
                ids = []
                for start in range(0, len(strings), ENCODE_CHUNK):  # a chunk at a time: see tok_encode
                    ids += self.tokenizer(strings[start:start + ENCODE_CHUNK], add_special_tokens=bool(
                        self.add_bos_token), truncation=False, return_attention_mask=False).input_ids
                self._memo = dict(zip(strings, ids, strict=True))
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._memo = None

    def tok_encode(self, string, left_truncate_len=None, add_special_tokens=False, truncation=False, **kwargs):
        memo = self._memo
        if memo is not None and not add_special_tokens and not truncation and not left_truncate_len and not kwargs \
                and isinstance(string, str):
            found = memo.get(string)
            if found is not None:
                return list(found)
        if isinstance(string, (list, tuple)) and len(string) > ENCODE_CHUNK and not kwargs:
            # lm-eval encodes every prompt of a task in one call: the tokenizer's objects for 50,000 prompts at once
            # are ~50 MB the process keeps after they are freed; the same ids, a chunk at a time
            encoded = []
            for start in range(0, len(string), ENCODE_CHUNK):
                encoded += super().tok_encode(list(string[start:start + ENCODE_CHUNK]),
                                              left_truncate_len=left_truncate_len,
                                              add_special_tokens=add_special_tokens, truncation=truncation)
            return encoded
        return super().tok_encode(string, left_truncate_len=left_truncate_len,
                                  add_special_tokens=add_special_tokens, truncation=truncation, **kwargs)

    async def get_batched_requests(self, requests, cache_keys, *, generate=True, ctxlens=None, **kwargs):
        """lm-eval's, with the request tasks started as a window moves instead of all at once. lm-eval creates a
        task (coroutine, retry state, payload) for every request of a whole task before the first answer comes:
        ~10 KB each, +64 MB at once for 50,000 prompts, memory the process keeps. Here at most TASKS_PER_SLOT per
        request in flight exist, enough to keep every one busy. The same requests, retries and connection pool;
        the answers in the same order; the first request that fails for good ends the batch, as with lm-eval's
        ``gather``."""
        # the names lm-eval's module holds: the worker's endpoint route (evalchemy/proxy.py) replaces its
        # ClientSession, and must apply to these sessions too
        ctxlens = ctxlens or [None] * len(requests)
        connector = api_models.TCPConnector(limit=self._concurrent, ssl=self.verify_certificate)
        sem = asyncio.Semaphore(self._concurrent)
        failed: list[BaseException] = []

        def note_failure(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                failed.append(task.exception())

        async with api_models.ClientSession(connector=connector,
                                            timeout=api_models.ClientTimeout(total=self.timeout)) as session:
            call = api_models.retry(  # as lm-eval's
                stop=api_models.stop_after_attempt(self.max_retries), reraise=True,
                wait=api_models.wait_exponential(multiplier=0.5, min=1, max=10),
                before_sleep=lambda state: eval_logger.info(f"Retry attempt {state.attempt_number}"))(self.amodel_call)
            answers, window = [], deque()
            try:
                for message, cache_key, ctxlen in zip(chunks(requests, n=self._batch_size),
                                                      chunks(cache_keys, n=self._batch_size),
                                                      chunks(ctxlens, n=self._batch_size), strict=False):
                    task = asyncio.create_task(call(session=session, sem=sem, messages=message, cache_keys=cache_key,
                                                    generate=generate, ctxlens=ctxlen, **kwargs))
                    task.add_done_callback(note_failure)
                    window.append(task)
                    if len(window) >= TASKS_PER_SLOT * self._concurrent:
                        answers.append(await window.popleft())
                    if failed:
                        raise failed[0]
                while window:
                    answers.append(await window.popleft())
            finally:
                for task in window:
                    task.cancel()
                self._save()
            return answers

    async def amodel_call(self, session, sem, messages, *, generate=True, cache_keys=None, ctxlens=None,
                          gen_kwargs=None, **kwargs):
        gen_kwargs = copy.deepcopy(gen_kwargs) if gen_kwargs else gen_kwargs  # the stock client copies too
        payload = self._create_payload(self.create_message(messages), generate=generate, gen_kwargs=gen_kwargs,
                                       seed=self._seed, **kwargs)
        body = orjson.dumps(payload)
        headers = {**self.header, **_JSON_HEADERS}
        cache_method = "generate_until" if generate else "loglikelihood"
        acquired = await sem.acquire()
        try:
            async with session.post(self.base_url, data=body, headers=headers) as response:
                if not response.ok:
                    error_text = await response.text()
                    eval_logger.warning(f"API request failed! Status code: {response.status}, "
                                        f"Response text: {error_text}. Retrying...")
                response.raise_for_status()  # retried by lm-eval, as with the stock client
                raw = await response.read()
            tmp_answers = None
            if not generate:
                if self._parser is None:
                    self._parser = simdjson.Parser()
                tmp_answers = read_logprobs(self._parser, raw, ctxlens)
            if tmp_answers is None:
                outputs = _loads(raw)
                if generate:
                    tmp_answers = self.parse_generations(outputs=outputs)
                else:
                    tmp_answers = self.parse_logprobs(outputs=outputs, tokens=messages, ctxlens=ctxlens)
            placeholder = api_models.LMEVAL_MODEL_NONE_ANSWER_PLACEHOLDER
            answers = []
            for a in tmp_answers:
                if a is None:
                    eval_logger.warning(f"API returned null content. Content filled with "
                                        f"`LMEVAL_MODEL_NONE_ANSWER_PLACEHOLDER = {placeholder}`. Check "
                                        "reasoning_content field or generation limits.")
                    a = placeholder
                answers.append(a)
            if cache_keys:
                self._keep(cache_method, answers, cache_keys)
            return answers
        except BaseException as e:
            eval_logger.error(f"Exception:{e!r}, {locals().get('outputs', '(no outputs)')}, retrying.")
            raise
        finally:
            if acquired:
                sem.release()

    def _keep(self, method: str, answers: list, cache_keys: list) -> None:
        """A request's answers for lm-eval's request cache, under the keys ``add_partial`` uses; handed over
        ``request_cache.ROWS`` at a time (one statement, one transaction, queued to the cache's writer thread without
        waiting) and at the end of the batch. lm-eval's cache (sqlitedict, autocommit) makes each answer its own
        transaction, one disk sync each, and waits for it: ~1 ms per prompt of the event loop's time here; one
        statement per request still left the writer thread thousands of statements behind at 50,000 prompts (in a
        run traced with tracemalloc, which slows it). A worker
        killed mid-task loses at most the answers not yet handed over, which a resumed run asks again."""
        if getattr(self.cache_hook, "dbdict", None) is None:
            return
        if self._unsaved is None:
            self._unsaved = {}
        # loglikelihood_rolling's pieces have no key: lm-eval caches the whole text itself
        self._unsaved.update((hash_args(method, key), answer)
                             for answer, key in zip(answers, cache_keys, strict=False) if key is not None)
        if len(self._unsaved) >= request_cache.ROWS:
            self._save()

    def _save(self) -> None:
        if self._unsaved:
            rows, self._unsaved = self._unsaved, {}
            request_cache.write_rows(self.cache_hook.dbdict, rows)


def read_logprobs(parser: simdjson.Parser, raw: bytes, ctxlens: list[int]) -> list[tuple[float, bool]] | None:
    """What lm-eval's ``parse_logprobs`` returns for an echo answer, read with simdjson, which builds Python objects
    only for what is read: the continuation's entries (an echoed 600-token prompt has 600 tokens, log-probabilities,
    top_logprobs and offsets; scoring reads the last few). The same floats (both parsers round exactly), summed in
    the same order; the same greedy rule. None for any answer that is not that plain shape (no log-probabilities, a
    missing key, a null entry, not JSON): the full parse and ``parse_logprobs`` then take it, with the worker's
    checks on it, and raise what they raise. The parser's objects all die with this call (it cannot parse again
    while one lives)."""
    try:
        doc = parser.parse(raw)
        rows = []
        for choice in doc["choices"]:
            logprobs = choice["logprobs"]
            if not isinstance(logprobs, simdjson.Object):
                return None
            token_logprobs, top_logprobs = logprobs["token_logprobs"], logprobs["top_logprobs"]
            if not (isinstance(token_logprobs, simdjson.Array) and isinstance(top_logprobs, simdjson.Array)):
                return None
            rows.append((choice["index"], token_logprobs, top_logprobs))
        rows.sort(key=itemgetter(0))  # parse_logprobs sorts the choices by index
        answers = []
        for (_, token_logprobs, top_logprobs), ctxlen in zip(rows, ctxlens, strict=False):
            if not ctxlen > 0:
                return None
            continuation = token_logprobs[ctxlen:-1]  # a list: only these entries become Python objects
            greedy = all(lp == max(top.values()) for lp, top in zip(continuation, top_logprobs[ctxlen:-1],
                                                                    strict=False))
            answers.append((sum(continuation), greedy))
        return answers
    except Exception:  # noqa: BLE001 - whatever it is, the full parse meets it again and reports it
        return None


def _loads(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # the standard library's error, so the job's error reads as the stock client's
        return json.loads(raw.decode("utf-8", errors="replace"))


def count_attempts(stats) -> None:
    """Count this client's HTTP attempts and failed attempts with the worker's ``RequestStats``, as its ``install``
    does for lm-eval's own request methods (requests sent are counted by aiohttp's tracing, for every client)."""
    method = FastCompletionsAPI.__dict__["amodel_call"]
    if not getattr(method, "_evalchemy_counted", False):
        wrapped = stats.counting(method)
        wrapped._evalchemy_counted = True
        FastCompletionsAPI.amodel_call = wrapped
