"""The embedded model's set-up steps (``scripts/setup.sh --local-model``): build the Hugging Face tokenizer from the
GGUF file, then verify it against llama.cpp's own tokenizer and the server's echoed log-probabilities.

``python -m evalchemy.backends.llamacpp_setup build-tokenizer [OUT_DIR]`` and ``... verify``.
"""

from __future__ import annotations

import json
import logging
import sys
import urllib.request
from pathlib import Path

from evalchemy.backends.llamacpp import (CACHE_DIR, MODEL_ID, N_CTX, LocalServer, _opener, model_file, tokenizer_dir,
                                         tokenizer_location)
from evalchemy.errors import PreflightError, UsageError

logger = logging.getLogger(__name__)


def build_tokenizer(gguf_path: Path, out: Path) -> Path:
    """The GGUF file's BPE tokenizer as a Hugging Face fast tokenizer folder (offline, no torch).

    Same ids as llama.cpp for this model (``tokenizer.ggml.model = gpt2``, ``tokenizer.ggml.pre = smollm``): digits
    split one by one, then byte-level BPE with the file's vocabulary and merges; control tokens are special tokens.
    (transformers' own GGUF loader needs torch, and its converter does not know the ``smollm`` digit split.)
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    fields = GGUFReader(str(gguf_path)).fields

    def value(key: str):
        return fields[key].contents() if key in fields else None

    kind, pre = value("tokenizer.ggml.model"), value("tokenizer.ggml.pre")
    if (kind, pre) != ("gpt2", "smollm"):
        raise PreflightError(f"{gguf_path}: tokenizer {kind}/{pre} is not the gpt2/smollm tokenizer this builder "
                             "reproduces")
    tokens: list[str] = value("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in value("tokenizer.ggml.merges")]
    types: list[int] = value("tokenizer.ggml.token_type")
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                                     byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                  for i, kind in enumerate(types) if kind == 3])  # 3: control
    eos = tokens[value("tokenizer.ggml.eos_token_id")]
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=tokens[value("tokenizer.ggml.bos_token_id")],
                                   eos_token=eos, unk_token=tokens[value("tokenizer.ggml.unknown_token_id")],
                                   pad_token=eos, model_max_length=N_CTX)
    template = value("tokenizer.chat_template")
    if template:
        fast.chat_template = template
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


VERIFY_TEXTS = (
    "Question: What do bees make?\nAnswer: honey",
    "The year 2026 has 365 days; 3.14159 and 1,000,000.",
    "보험계약에서 보험료를 납부할 의무가 있는 사람은 누구인가?",
    "금융 정답：A  (B)\n\n\tC",
    "naïve café 😀 don't  \"quoted\"",
    "<|im_start|>user\nHi<|im_end|>\n<repo_name>x<jupyter_code>",
)


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with _opener.open(request, timeout=60) as response:
        return json.loads(response.read())


def server_tokens(server: LocalServer, text: str) -> list[int]:
    """llama.cpp's own token ids for ``text`` (``/extras/tokenize``, which prepends BOS when the model adds it)."""
    return _post_json(f"{server.base_url}/extras/tokenize", {"input": text})["tokens"]


def echo_logprobs(server: LocalServer, prompt: str) -> dict:
    """The ``logprobs`` of a log-likelihood request as lm-eval sends it (echo, one generated token)."""
    body = {"model": MODEL_ID, "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}
    return _post_json(server.completions_url, body)["choices"][0]["logprobs"]


def verify(log_path: Path | None = None) -> list[str]:
    """Start the server, compare llama.cpp's token ids with the built tokenizer's, and check that an echoed prompt
    comes back one entry per prompt token plus the generated one (the BOS override); returns the problems."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    problems = []
    with LocalServer(log_path) as server:
        for text in VERIFY_TEXTS:
            expected = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)
            got = server_tokens(server, text)
            if got != expected:
                problems.append(f"token ids differ for {text!r}: llama.cpp {got}, tokenizer {expected}")
        prompt = VERIFY_TEXTS[0]
        echoed = echo_logprobs(server, prompt)["tokens"]
        count = len(tokenizer.encode(prompt, add_special_tokens=False))
        if len(echoed) != count + 1:
            problems.append(f"echo of {prompt!r} has {len(echoed)} tokens, not {count} prompt tokens + 1 generated: "
                            "the log-probabilities would not line up (is the BOS override applied?)")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``build-tokenizer [OUT_DIR]`` or ``verify``; the set-up script's steps. Messages go to stderr; the exit code
    is the project's error's (errors.py): 2 usage, 3 the model or its tokenizer unusable, 0 done."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args or args[0] not in ("build-tokenizer", "verify") or (args[0] == "verify" and len(args) > 1) \
            or len(args) > 2:
        logger.error("usage: python -m evalchemy.backends.llamacpp_setup build-tokenizer [OUT_DIR] | verify")
        return UsageError.exit_code
    try:
        if args[0] == "build-tokenizer":
            out = build_tokenizer(model_file(), Path(args[1]) if len(args) > 1 else tokenizer_location())
            logger.info("tokenizer written to %s", out)
            return 0
        log_path = CACHE_DIR / "verify-server.log"
        log_path.unlink(missing_ok=True)
        problems = verify(log_path)
    except PreflightError as err:
        logger.error("error: %s", err)
        return err.exit_code
    for problem in problems:
        logger.error("error: %s", problem)
    if problems:
        return PreflightError.exit_code
    logger.info("tokenizer matches llama.cpp on %d texts; echoed log-probabilities line up", len(VERIFY_TEXTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
