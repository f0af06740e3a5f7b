"""The test server's tokenizer: a word-level tokenizer over the texts a test uses (``build_test_tokenizer``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

UNK, BOS, EOS = "[UNK]", "<s>", "</s>"
SPECIALS = (UNK, BOS, EOS)


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def build_test_tokenizer(folder: Path, texts: Iterable[str]) -> Path:
    """Write a Hugging Face fast tokenizer covering every word of ``texts`` to ``folder`` and return it.

    Word level: split on whitespace, each punctuation character its own token; ids are the special tokens
    ``[UNK]`` 0, ``<s>`` 1, ``</s>`` 2, then the words sorted. Decoding joins tokens with single spaces. No
    post-processor: ``add_special_tokens`` adds nothing. Same texts, same bytes; nothing is downloaded, and
    ``transformers.AutoTokenizer.from_pretrained(folder)`` loads it offline.
    """
    from tokenizers import Tokenizer, decoders, models

    folder = Path(folder)
    pre = _pre_tokenizer()
    words = {piece for text in texts for piece, _ in pre.pre_tokenize_str(text)}
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in sorted(words - set(SPECIALS)):
        vocab[word] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # no token starts with "##": joins with " "
    tokenizer.add_special_tokens(list(SPECIALS))
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **special}
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (folder / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder
