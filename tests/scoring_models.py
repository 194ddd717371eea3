"""Tiny random *ForSequenceClassification models, built in code: a 3-intent BERT classifier and
one-output cross-encoder rerankers (BERT, like ms-marco-MiniLM; XLM-RoBERTa, like
bge-reranker-base)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import train_wordpiece

INTENTS = ("lights", "music", "weather")


def _tokenizer(token_types: bool = True):
    from transformers import BertTokenizerFast

    from edgepipe.tasks.texts import builtin_texts

    tokenizer = train_wordpiece(builtin_texts("embedding"))
    if token_types:
        return tokenizer
    # RoBERTa's tokenizers give no token_type_ids (its type vocabulary has one entry).
    return BertTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
        model_input_names=["input_ids", "attention_mask"],
    )


def _save(model, tokenizer, dest: Path) -> Path:
    model.eval().save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def make_tiny_classifier(dest: Path, seed: int = 0) -> Path:
    """BertForSequenceClassification with id2label of 3 intents (hidden 32, 2 layers, weights at
    std 0.2 like make_tiny_bert's, so int8 loses something to measure)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.2,
        id2label=dict(enumerate(INTENTS)),
        label2id={n: i for i, n in enumerate(INTENTS)},
    )
    torch.manual_seed(seed)
    return _save(BertForSequenceClassification(config), tokenizer, dest)


def make_tiny_reranker(dest: Path, seed: int = 0) -> Path:
    """A one-output BERT cross-encoder, shaped like cross-encoder/ms-marco-MiniLM-L-6-v2."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.2,
        num_labels=1,
    )
    torch.manual_seed(seed)
    return _save(BertForSequenceClassification(config), tokenizer, dest)


def make_tiny_xlmr_reranker(dest: Path, seed: int = 0) -> Path:
    """A one-output XLM-RoBERTa cross-encoder, shaped like BAAI/bge-reranker-base (positions
    offset past the padding id, one token type)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = _tokenizer(token_types=False)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        type_vocab_size=1,
        pad_token_id=0,
        initializer_range=0.2,
        num_labels=1,
    )
    torch.manual_seed(seed)
    return _save(XLMRobertaForSequenceClassification(config), tokenizer, dest)
