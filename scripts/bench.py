"""Performance figures of the runner against the project's test server (a benchmark, not a test).

    .venv/bin/python scripts/bench.py [--repeat 5] [--skip-loop] [--scale]

Prints one line per figure: control-command wall times, the 8-benchmark config through the runner vs. a loop of
plain `lm_eval run` calls, endpoint saturation (400 log-likelihood requests at 50 ms latency, 16 in flight) for the
runner's defaults and for lm-eval's defaults, the client ceiling against a zero-latency server, the requests a
resumed identical run sends, and the run's peak memory. Everything runs on 127.0.0.1 with data this script writes.
``--scale`` runs only the real shapes instead, each with the lean client (default) and lm-eval's stock client
(``--client lm-eval``) one after the other: see ``scale`` below.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evalchemy.testing.server import TestServer, build_test_tokenizer, prompt_count  # noqa: E402

PYTHON = sys.executable
WORDS = ["red", "blue", "green", "gold", "black", "white", "pink", "gray"]


def write_task(folder: Path, name: str, n_questions: int, context_words: int = 0, tag: int | None = None) -> None:
    """``context_words`` > 0: a long shared context before each question (one token per word with the bench's
    tokenizer), like a 5-shot prompt."""
    context = " ".join(WORDS[(i * 7) % 8] for i in range(context_words)) + " " if context_words else ""
    tag_text = f"{tag} " if tag is not None else ""  # tasks of one run with distinct prompts (none cached)
    rows = [{"question": f"{context}{tag_text}Which colour is number {i % 100} ?", "choices": WORDS[i % 4: i % 4 + 4],
             "answer": i % 4} for i in range(n_questions)]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1\n")


def config_for(path: Path, names: list[str]) -> Path:
    path.write_text(json.dumps({"benchmarks": {n: {"enabled": True, "tasks": [n]} for n in names}}))
    return path


class RssPoller:
    """Peak resident memory of a process and its descendants, summed, sampled every 20 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak_kb, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, frontier = [self.pid], [self.pid]
        while frontier:
            parent = frontier.pop()
            try:
                children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            except OSError:
                children = []
            pids += [int(c) for c in children]
            frontier += [int(c) for c in children]
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    pass
            self.peak_kb = max(self.peak_kb, total)
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kb


def run_runner(args: list[str], env: dict, poll: bool = False) -> tuple[float, int, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.Popen([str(ROOT / "run_evalchemy.sh"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    poller = RssPoller(proc.pid) if poll else None
    stdout, stderr = proc.communicate(timeout=900)
    elapsed = time.perf_counter() - started
    peak = poller.stop() if poller else 0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {stderr[-2000:]}")
    return elapsed, peak, subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def is_check(body: dict) -> bool:
    """The preflight's echo-check requests (tiny, with ``logit_bias``), sent before the worker starts."""
    return "logit_bias" in body


def prompts(server: TestServer, since: int = 0) -> int:
    """Prompts in lm-eval's requests the server received (one HTTP request may carry several), the preflight's
    echo-check requests left out."""
    return sum(prompt_count(r) for r in server.requests[since:] if not is_check(r))


def task_requests(server: TestServer, since: int = 0) -> int:
    return sum(1 for r in server.requests[since:] if not is_check(r))


def busy_span(server: TestServer, since: int = 0) -> float:
    """Server-side time from the first of lm-eval's requests' arrival to the last answer (the preflight's echo-check
    requests, answered before the worker even starts, left out)."""
    checks = sum(1 for r in server.requests[since:] if is_check(r))
    times = sorted(server.timings[since:])[checks:]
    return max(end for _, end in times) - min(start for start, _ in times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each control command (median reported)")
    parser.add_argument("--skip-loop", action="store_true", help="skip the slow loop of plain lm_eval calls")
    parser.add_argument("--scale", action="store_true", help="only the real shapes, lean client beside lm-eval's")
    parser.add_argument("--only", action="append", choices=SCALE_PARTS, metavar="PART",
                        help=f"with --scale: only these parts (repeatable; {', '.join(SCALE_PARTS)})")
    parser.add_argument("--client", action="append", choices=[name for name, _ in CLIENTS], dest="clients",
                        help="with --scale: only this client (repeatable; default: both, side by side)")
    opts = parser.parse_args()
    if opts.scale:
        return scale(set(opts.only or SCALE_PARTS), set(opts.clients or [name for name, _ in CLIENTS]))

    work = Path(tempfile.mkdtemp(prefix="evalchemy-bench-"))
    tasks = work / "tasks"
    tasks.mkdir()
    small = [f"bench_small_{i}" for i in range(8)]
    for name in small:
        write_task(tasks, name, 5)
    write_task(tasks, "bench_saturation", 100)  # 400 log-likelihood requests
    tokenizer = build_test_tokenizer(work / "tokenizer", ["Question : Which colour is number ? Answer :", *WORDS,
                                                          *map(str, range(100))])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "NO_PROXY": "127.0.0.1",
           "EVALCHEMY_CACHE_DIR": str(work / "cache")}
    common = ["--include-path", str(tasks), "--output", str(work / "results")]
    eight = config_for(work / "eight.json", small)
    saturation = config_for(work / "saturation.json", ["bench_saturation"])
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; work folder {work}")

    # control commands
    subprocess.run([str(ROOT / "run_evalchemy.sh"), "--validate-config", "--config", str(eight), *common[:2]],
                   env=env, capture_output=True)  # warm the task index cache once
    for mode in ("--validate-config", "--dry-run", "--list-benchmarks"):
        times = []
        for _ in range(opts.repeat):
            started = time.perf_counter()
            subprocess.run([str(ROOT / "run_evalchemy.sh"), mode, "--config", str(eight), *common[:2]], env=env,
                           capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        print(f"control {mode}: median {statistics.median(times):.3f} s over {opts.repeat} runs (target <= 0.25 s)")

    with TestServer(tokenizer, "bench-model", latency=0.0, answers={"favoured": ["red"]}) as srv:
        url = srv.base_url
        first_s, _, _ = run_runner(["--endpoint", url, "--config", str(eight), "--run-id", "eight", *common], env)
        # again with the datasets prepared (as the loop below finds them), each run in its own output folder (a
        # run in the same folder would resume: nothing to ask)
        again = [run_runner(["--endpoint", url, "--config", str(eight), "--run-id", "eight", "--include-path",
                             str(tasks), "--output", str(work / f"again-{i}")], env)[0] for i in range(3)]
        runner_s = statistics.median(again)
        print(f"orchestration runner: 8 benchmarks in {runner_s:.2f} s, median of 3 runs (each "
              f"{', '.join(f'{t:.2f}' for t in again)} s; the first run, preparing the datasets: {first_s:.2f} s)")
        if not opts.skip_loop:
            started = time.perf_counter()
            for name in small:
                subprocess.run([str(Path(PYTHON).parent / "lm_eval"), "run", "--model", "local-completions",
                                "--model_args", f"base_url={srv.completions_url},model=bench-model,tokenizer="
                                f"{tokenizer},tokenizer_backend=huggingface,tokenized_requests=True",
                                "--tasks", name, "--include_path", str(tasks), "--batch_size", "1",
                                "--output_path", str(work / "loop" / name)], env=env, capture_output=True,
                               check=True)
            loop_s = time.perf_counter() - started
            print(f"orchestration loop of plain lm_eval calls: 8 benchmarks in {loop_s:.2f} s")
            print(f"orchestration ratio runner/loop: {runner_s / loop_s:.3f} (target <= 0.05)")

    n_requests, latency, capacity = 400, 0.05, 16
    ideal = n_requests * latency / capacity
    with TestServer(tokenizer, "bench-model", latency=latency, capacity=capacity,
                    answers={"favoured": ["red"]}) as srv:
        _, peak_kb, _ = run_runner(["--endpoint", srv.base_url, "--config", str(saturation), "--run-id", "sat",
                                    *common], env, poll=True)
        span = busy_span(srv)
        sent = task_requests(srv)
        print(f"saturation runner defaults: {prompts(srv)} prompts in {sent} requests in {span:.2f} s server-side; "
              f"ideal {ideal:.2f} s; "
              f"ratio ideal/runner {ideal / span:.3f} (target >= 0.85)")
        print(f"peak memory of the run (runner + worker, RSS): {peak_kb / 1024:.0f} MB (target <= 500 MB)")
        before = len(srv.requests)
        run_runner(["--endpoint", srv.base_url, "--config", str(saturation), "--run-id", "sat", *common], env)
        print(f"resumed identical run: {task_requests(srv, before)} requests sent (target 0; the preflight's echo check "
              "aside)")
        mark = len(srv.timings)
        run_runner(["--endpoint", srv.base_url, "--config", str(saturation), "--run-id", "sat-lm-eval-defaults",
                    "--concurrency", "1", "--batch-size", "1", *common], env)
        defaults_span = busy_span(srv, mark)
        print(f"saturation lm-eval defaults (1 prompt per request, 1 request in flight): {defaults_span:.2f} s server-side; "
              f"ratio ideal/defaults {ideal / defaults_span:.3f}")

    with TestServer(tokenizer, "bench-model", latency=0.0, answers={"favoured": ["red"]}) as srv:
        run_runner(["--endpoint", srv.base_url, "--config", str(saturation), "--run-id", "ceiling", *common], env)
        span = busy_span(srv)
        print(f"client ceiling: {prompts(srv) / span:.0f} prompts/s against a zero-latency server "
              f"({prompts(srv)} prompts in {task_requests(srv)} requests in {span:.2f} s)")
    return 0


CLIENTS = (("evalchemy", ()), ("lm-eval", ("--client", "lm-eval")))


def write_generation_task(folder: Path, name: str, n_docs: int) -> None:
    rows = [{"question": f"Name colour number {i % 100}", "target": WORDS[i % 8]} for i in range(n_docs)]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: generate_until\ntest_split: test\n"
        'doc_to_text: "{{question}}\\nAnswer:"\ndoc_to_target: "{{target}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 4\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1\n")


def client_alone(tokenizer: Path, context_words: int, n_questions: int,
                 clients: set[str]) -> dict[str, tuple[float, float]]:
    """Each client's own ceiling: lm-eval's model object in this process, log-likelihood requests (4 per question,
    8 prompts per request, 16 in flight) against the test server in a separate process (so its CPU is not counted).
    Returns prompts/s by wall time and by this process's CPU time (the client's cost alone)."""
    import re

    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from evalchemy.engines.lm_eval.fast_client import FastCompletionsAPI

    srv = subprocess.Popen([PYTHON, "-m", "evalchemy.testing.server", "--tokenizer", str(tokenizer), "--model-name",
                            "m", "--max-model-len", "4096"], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        port = re.search(r":(\d+)", srv.stdout.readline()).group(1)
        context = " ".join(WORDS[(i * 7) % 8] for i in range(context_words)) + " " if context_words else ""
        out = {}
        for name, cls in (("evalchemy", FastCompletionsAPI), ("lm-eval", LocalCompletionsAPI)):
            if name not in clients:
                continue
            reqs = [Instance("loglikelihood", {}, (f"{context}{name} Question: Which colour is number {i % 100} ?"
                                                   "\nAnswer:", f" {WORDS[(i + j) % 8]}"), idx=j)
                    for i in range(n_questions) for j in range(4)]
            lm = cls(base_url=f"http://127.0.0.1:{port}/v1/completions", model="m", tokenizer=str(tokenizer),
                     tokenizer_backend="huggingface", tokenized_requests=True, num_concurrent=16, max_length=4096,
                     batch_size=8)
            wall, cpu = time.perf_counter(), time.process_time()
            lm.loglikelihood(reqs, disable_tqdm=True)
            out[name] = (len(reqs) / (time.perf_counter() - wall), len(reqs) / (time.process_time() - cpu))
        return out
    finally:
        srv.terminate()
        srv.wait()


SCALE_PARTS = ("alone", "ceiling", "saturation", "subjects", "samples")


def scale(parts: set[str], clients: set[str]) -> int:
    """The real shapes, each run once per client on a fresh test server:
    - client ceiling: 400 short prompts and 2,000 prompts of ~600 tokens against a zero-latency server;
    - saturation: 20,000 prompts of ~600 tokens, 20 ms latency, capacity 64 (ideal = 20,000 x 20 ms / 64);
    - 45 subjects x 200 questions (36,000 prompts of ~50 tokens) as 45 task entries of one benchmark: runner overhead per
      task = (wall time - server busy span) / 45;
    - 50,000 samples with log_samples (a one-word generation task): peak RSS of runner + worker, and the time from
      the server's last answer to the runner's exit (lm-eval's results and samples files, the per-question score
      files, the summary).
    Every run also collects lm-eval's samples (the worker always asks for them)."""
    chosen = [(name, args) for name, args in CLIENTS if name in clients]
    work = Path(tempfile.mkdtemp(prefix="evalchemy-scale-"))
    tasks = work / "tasks"
    tasks.mkdir()
    tokenizer = build_test_tokenizer(work / "tokenizer", ["Question : Which colour is number ? Answer : Name",
                                                          *WORDS, *map(str, range(100))])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "NO_PROXY": "127.0.0.1",
           "EVALCHEMY_CACHE_DIR": str(work / "cache")}
    write_task(tasks, "scale_short", 100)
    write_task(tasks, "scale_long_ceiling", 500, context_words=590)
    write_task(tasks, "scale_long", 5000, context_words=590)
    subjects = [f"scale_subject_{i:02d}" for i in range(45)]
    for i, name in enumerate(subjects):
        write_task(tasks, name, 200, context_words=40, tag=i)
    write_generation_task(tasks, "scale_samples", 50000)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; work folder {work}", flush=True)
    for label, words, n in (("short prompts", 0, 500), ("~600-token prompts", 590, 500)) if "alone" in parts else ():
        for client, (by_wall, by_cpu) in client_alone(tokenizer, words, n, clients).items():
            print(f"[{client}] client alone, {label}: {by_wall:.0f} prompts/s wall (server in its own process), "
                  f"{by_cpu:.0f} prompts/s of client CPU (target >= {2000 if not words else 800})", flush=True)

    def run(client_args, config_names, run_id, *, latency=0.0, capacity=None, extra=(), poll=False, config=None):
        cfg = config or config_for(work / f"{run_id}.json", config_names)
        with TestServer(tokenizer, "bench-model", latency=latency, capacity=capacity, max_model_len=4096,
                        answers={"favoured": ["red"]}) as srv:
            started = time.monotonic()
            wall, peak_kb, _ = run_runner(["--endpoint", srv.base_url, "--config", str(cfg), "--run-id", run_id,
                                           "--include-path", str(tasks), "--output", str(work / "results"),
                                           *extra, *client_args], env, poll=poll)
            ended = time.monotonic()
            last_answer = max(end for _, end in srv.timings)
            return {"wall": wall, "peak_mb": peak_kb / 1024, "span": busy_span(srv), "prompts": prompts(srv),
                    "requests": task_requests(srv), "tail": ended - last_answer, "started": started}

    for client, args in chosen if "ceiling" in parts else ():
        r = run(args, ["scale_short"], f"ceil-short-{client}")
        print(f"[{client}] client ceiling, short prompts: {r['prompts'] / r['span']:.0f} prompts/s "
              f"({r['prompts']} prompts in {r['requests']} requests in {r['span']:.2f} s; target >= 2,000)", flush=True)
        r = run(args, ["scale_long_ceiling"], f"ceil-long-{client}")
        print(f"[{client}] client ceiling, ~600-token prompts: {r['prompts'] / r['span']:.0f} prompts/s "
              f"({r['prompts']} prompts in {r['requests']} requests in {r['span']:.2f} s; target >= 800)", flush=True)
    for client, args in chosen if "saturation" in parts else ():
        latency, capacity = 0.02, 64
        r = run(args, ["scale_long"], f"sat-{client}", latency=latency, capacity=capacity,
                extra=("--concurrency", "16"))
        ideal = r["prompts"] * latency / capacity
        print(f"[{client}] saturation, {r['prompts']} prompts of ~600 tokens, 20 ms, capacity 64: {r['span']:.2f} s "
              f"server-side, ideal {ideal:.2f} s, ideal/runner {ideal / r['span']:.3f} (target >= 0.95); "
              f"wall {r['wall']:.1f} s", flush=True)
    for client, args in chosen if "subjects" in parts else ():
        cfg = work / f"subjects-{client}.json"
        cfg.write_text(json.dumps({"benchmarks": {"kmmlu45": {"enabled": True, "tasks": subjects}},
                                   "tasks": {n: {"enabled": True, "tasks": [n]} for n in subjects}}))
        r = run(args, [], f"subjects-{client}", config=cfg)
        print(f"[{client}] 45 subjects x 200 questions ({r['prompts']} prompts): wall {r['wall']:.1f} s, server busy "
              f"{r['span']:.1f} s, runner overhead per task {(r['wall'] - r['span']) / 45:.3f} s (target <= 0.15 s)", flush=True)
    for client, args in chosen if "samples" in parts else ():
        cfg = work / f"samples-{client}.json"
        cfg.write_text(json.dumps({"benchmarks": {"samples": {"enabled": True, "tasks": ["samples"]}},
                                   "tasks": {"samples": {"enabled": True, "tasks": ["scale_samples"],
                                                         "log_samples": True}}}))
        r = run(args, [], f"samples-{client}", config=cfg, poll=True)
        print(f"[{client}] 50,000 samples with log_samples: wall {r['wall']:.1f} s, server busy {r['span']:.1f} s, "
              f"from the last answer to the runner's exit {r['tail']:.1f} s, peak RSS {r['peak_mb']:.0f} MB "
              "(target <= 400 MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
