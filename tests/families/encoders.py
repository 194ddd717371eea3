"""Tiny random encoders of every embedding family but BERT (tests/conftest.py has it).

Each config.json copies its real checkpoint's fields (special token ids, position offsets, token
types or none, relative buckets, RoPE and local windows, embedding projections), scaled down to 2
layers and hidden 32 or 64; each tokenizer is built in the family's style (tests/families/vocab.py)
and saved with its transformers class. ``initializer_range`` is 0.2, as make_tiny_bert's docstring
explains: at the real 0.02 a 32-wide model is nearly LayerNorm(embeddings) and int8 is lossless.
Two are saved as sentence-transformers models the way the hub has them (modules.json, a legacy
pooling config): XLM-R with CLS pooling like BAAI/bge-m3, MPNet with mean pooling like
all-mpnet-base-v2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.families import vocab

SEQ = 64  # the tiny models' longest input, in tokens
# Shared by all: 2 layers, 2 heads of 16, an MLP twice as wide, near-unit-gain weights.
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    initializer_range=0.2,
)


def _save(config: Any, tokenizer: Any, dest: Path, seed: int) -> Path:
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    AutoModel.from_config(config).eval().save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def _sentence_transformers(dest: Path, dim: int, pooling: str, max_seq_length: int) -> Path:
    """Make ``dest`` a sentence-transformers model: Transformer, Pooling, Normalize, in the files
    a hub checkpoint has (the pooling config in its legacy ``pooling_mode_*`` form)."""
    modules = [
        ("", "Transformer"),
        ("1_Pooling", "Pooling"),
        ("2_Normalize", "Normalize"),
    ]
    (dest / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": i,
                    "name": str(i),
                    "path": path,
                    "type": f"sentence_transformers.models.{t}",
                }
                for i, (path, t) in enumerate(modules)
            ],
            indent=2,
        )
    )
    (dest / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    (dest / "config_sentence_transformers.json").write_text(
        json.dumps({"__version__": {"sentence_transformers": "2.2.2"}, "prompts": {}})
    )
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    (dest / "1_Pooling").mkdir()
    (dest / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": dim, **{f"pooling_mode_{m}": m == pooling for m in modes}})
    )
    (dest / "2_Normalize").mkdir()
    return dest


def make_tiny_distilbert(dest: Path, seed: int = 0) -> Path:
    """msmarco-distilbert-base-v4's shape: no token types, its own config names (dim, n_heads)."""
    from transformers import DistilBertConfig, DistilBertTokenizerFast

    tok = vocab.wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[CLS]", "[SEP]", "[UNK]")
    tokenizer = vocab.fast(
        DistilBertTokenizerFast,
        tok,
        SEQ,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=SEQ,
        activation="gelu",
        sinusoidal_pos_embds=False,
        pad_token_id=0,
        initializer_range=0.2,
    )
    return _save(config, tokenizer, dest, seed)


def make_tiny_electra(dest: Path, seed: int = 0) -> Path:
    """electra-small-discriminator's shape: embeddings narrower than the hidden size (projected),
    token types."""
    from transformers import ElectraConfig, ElectraTokenizerFast

    tok = vocab.wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[CLS]", "[SEP]", "[UNK]")
    tokenizer = vocab.fast(
        ElectraTokenizerFast,
        tok,
        SEQ,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    config = ElectraConfig(
        vocab_size=len(tokenizer),
        embedding_size=32,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=SEQ,
        type_vocab_size=2,
        initializer_range=0.2,
    )
    return _save(config, tokenizer, dest, seed)


ROBERTA_SPECIALS = dict(
    bos_token="<s>",
    eos_token="</s>",
    sep_token="</s>",
    cls_token="<s>",
    unk_token="<unk>",
    pad_token="<pad>",
    mask_token="<mask>",
)


def make_tiny_roberta(dest: Path, seed: int = 0) -> Path:
    """RoBERTa's shape: byte-level BPE, <pad> = 1 and positions counted from it (so 2 + 64
    position rows for 64 tokens), one token type (no token_type_ids input)."""
    from tokenizers import processors
    from transformers import RobertaConfig, RobertaTokenizerFast

    tok = vocab.byte_bpe(["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    tokenizer = vocab.fast(RobertaTokenizerFast, tok, SEQ, **ROBERTA_SPECIALS)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=SEQ + 2,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        **SMALL,
    )
    return _save(config, tokenizer, dest, seed)


def make_tiny_xlm_roberta(dest: Path, seed: int = 0) -> Path:
    """BAAI/bge-m3's shape: XLM-R with a SentencePiece-style Unigram vocabulary, saved as a
    sentence-transformers model with CLS pooling and normalisation."""
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    tok = vocab.unigram(["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"])
    tok.post_processor = vocab.template(tok, "<s>", "</s>", "</s> </s>")
    tokenizer = vocab.fast(XLMRobertaTokenizerFast, tok, SEQ, **ROBERTA_SPECIALS)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=SEQ + 2,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        **SMALL,
    )
    _save(config, tokenizer, dest, seed)
    return _sentence_transformers(dest, 32, "cls_token", SEQ)


def make_tiny_camembert(dest: Path, seed: int = 0) -> Path:
    """camembert-base's shape: Unigram pieces behind its unused specials (<s> = 5, </s> = 6,
    <pad> = 1), positions counted from <pad>. Its tokenizer carries no model_max_length, as
    some hub checkpoints do: the longest input then comes from the config (64 of 66 rows)."""
    from transformers import CamembertConfig, CamembertTokenizerFast

    specials = ["<s>NOTUSED", "<pad>", "</s>NOTUSED", "<unk>", "<unk>NOTUSED", "<s>", "</s>"]
    tok = vocab.unigram(specials, ["<mask>"])
    tok.post_processor = vocab.template(tok, "<s>", "</s>", "</s> </s>")
    tokenizer = vocab.fast(CamembertTokenizerFast, tok, None, **ROBERTA_SPECIALS)
    config = CamembertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=SEQ + 2,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=5,
        eos_token_id=6,
        layer_norm_eps=1e-5,
        **SMALL,
    )
    return _save(config, tokenizer, dest, seed)


def make_tiny_mpnet(dest: Path, seed: int = 0) -> Path:
    """all-mpnet-base-v2's shape: WordPiece behind RoBERTa-style specials (<pad> = 1, positions
    counted from it), relative position buckets, a sentence-transformers model with mean pooling
    and a max_seq_length below the model's limit."""
    from transformers import MPNetConfig, MPNetTokenizerFast

    tok = vocab.wordpiece(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"], "<s>", "</s>", "[UNK]")
    tok.post_processor = vocab.template(tok, "<s>", "</s>", "</s> </s>")
    tokenizer = vocab.fast(MPNetTokenizerFast, tok, SEQ, **{**ROBERTA_SPECIALS, "unk_token": "[UNK]"})
    config = MPNetConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=SEQ + 2,
        relative_attention_num_buckets=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        **SMALL,
    )
    _save(config, tokenizer, dest, seed)
    return _sentence_transformers(dest, 32, "mean_tokens", 48)


def make_tiny_deberta_v2(dest: Path, seed: int = 0) -> Path:
    """deberta-v3-small's shape: disentangled relative attention (c2p and p2c, shared keys,
    log buckets: 16 here for 64 tokens, 256 there for 512), no absolute positions, no token types
    (type_vocab_size 0), a Unigram vocabulary with [MASK] last, no model_max_length."""
    from transformers import DebertaV2Config, DebertaV2TokenizerFast

    tok = vocab.unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]"], ["[MASK]"])
    tok.post_processor = vocab.template(tok, "[CLS]", "[SEP]", "[SEP]")
    tokenizer = vocab.fast(
        DebertaV2TokenizerFast,
        tok,
        None,
        bos_token="[CLS]",
        eos_token="[SEP]",
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=SEQ,
        relative_attention=True,
        position_buckets=16,
        max_relative_positions=-1,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
        pad_token_id=0,
        layer_norm_eps=1e-7,
        hidden_act="gelu",
        **SMALL,
    )
    return _save(config, tokenizer, dest, seed)


def make_tiny_modernbert(dest: Path, seed: int = 0) -> Path:
    """ModernBERT-base's shape: RoPE (160k global, 10k local), every third layer global and the
    others a sliding window (16 tokens here, 128 there, so the window bites), GeGLU, no biases,
    byte-level BPE with its specials after the merges, no token types."""
    from tokenizers import processors
    from transformers import ModernBertConfig, PreTrainedTokenizerFast

    tail = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = vocab.byte_bpe(["<|endoftext|>"], tail)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    tokenizer = vocab.fast(
        PreTrainedTokenizerFast,
        tok,
        SEQ,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    )
    ids = {name: tok.token_to_id(f"[{name.upper()}]") for name in ("cls", "sep", "pad")}
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        hidden_activation="gelu",
        max_position_embeddings=SEQ,
        initializer_range=0.2,
        norm_eps=1e-5,
        norm_bias=False,
        global_rope_theta=160000.0,
        local_rope_theta=10000.0,
        global_attn_every_n_layers=3,
        local_attention=16,
        attention_bias=False,
        mlp_bias=False,
        classifier_pooling="mean",
        pad_token_id=ids["pad"],
        bos_token_id=ids["cls"],
        cls_token_id=ids["cls"],
        eos_token_id=ids["sep"],
        sep_token_id=ids["sep"],
    )
    return _save(config, tokenizer, dest, seed)


TINY: dict[str, Callable[[Path], Path]] = {
    "distilbert": make_tiny_distilbert,
    "roberta": make_tiny_roberta,
    "xlm-roberta": make_tiny_xlm_roberta,
    "mpnet": make_tiny_mpnet,
    "electra": make_tiny_electra,
    "camembert": make_tiny_camembert,
    "deberta-v2": make_tiny_deberta_v2,
    "modernbert": make_tiny_modernbert,
}
