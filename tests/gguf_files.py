"""GGUF files written in code from a Hugging Face Llama directory, as llama.cpp's converter lays
them out (tensor names, q/k rows permuted for its rotary layout, a gpt2-type vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CONTROL, NORMAL = 3, 1


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permute of q/k rows (transformers' GGUF loader undoes it)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(
    model_dir: Path,
    dest: Path,
    *,
    arch: str = "llama",
    vocab: str = "gpt2",
    pre: str = "gpt-2",
    quant: str = "F32",
    chat_template: str | None = None,
    licence: tuple[str, str, str] | None = None,
) -> Path:
    """``model_dir``'s weights and byte-level BPE tokenizer as a GGUF; matrices F32 or Q8_0."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    weights = load_file(model_dir / "model.safetensors")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    hidden = config["hidden_size"]

    w = gguf.GGUFWriter(str(dest), arch)
    w.add_name(model_dir.name)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(config.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_dimension_count(hidden // heads)
    qtype = gguf.GGMLQuantizationType[quant]
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if quant == "F32" else gguf.LlamaFileType.MOSTLY_Q8_0)

    ids = tok["model"]["vocab"]
    tokens = sorted(ids, key=ids.__getitem__)
    specials = {t["content"] for t in tok["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model(vocab)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([CONTROL if t in specials else NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_unk_token_id(ids["<unk>"])
    w.add_pad_token_id(config["eos_token_id"])
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    if licence:  # general.license, general.license.name, general.license.link
        w.add_license(licence[0])
        w.add_license_name(licence[1])
        w.add_license_link(licence[2])

    def add(name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array.astype(np.float32))
        if array.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, array)

    add("token_embd.weight", weights["model.embed_tokens.weight"])
    add("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights and not config.get("tie_word_embeddings", True):
        add("output.weight", weights["lm_head.weight"])
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(config["num_hidden_layers"]):
        for hf, gg in names.items():
            array = weights[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                array = _permute(array, heads)
            elif gg == "attn_k":
                array = _permute(array, kv_heads)
            add(f"blk.{i}.{gg}.weight", array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dest
