"""Tokenizers for the tiny encoders, built in code in each family's style (nothing downloaded).

WordPiece (BERT-likes), byte-level BPE (RoBERTa, ModernBERT) and a SentencePiece-style Unigram
(XLM-R, CamemBERT, DeBERTa-v2). Each vocabulary comes from edgepipe's evaluation texts in a fixed
order, ties broken alphabetically, for the reason tests/conftest.py's train_wordpiece gives: the
tokenizers library's trainers break ties in hash-map order, so two trainings differ, and with the
token ids the tiny model's function and its int8 scores.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors


def _texts() -> list[str]:
    from edgepipe.tasks.texts import builtin_texts

    return builtin_texts("embedding")


def template(tok: Tokenizer, first: str, sep: str, pair_sep: str) -> processors.TemplateProcessing:
    """``first $A sep`` and its pair form (``pair_sep`` between the two: RoBERTa doubles it)."""
    return processors.TemplateProcessing(
        single=f"{first} $A {sep}",
        pair=f"{first} $A {pair_sep} $B:1 {sep}:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in dict.fromkeys((first, sep))],
    )


def wordpiece(specials: list[str], cls: str, sep: str, unk: str, vocab_size: int = 400) -> Tokenizer:
    """BERT-style: lower-cased, each character alone and as a ``##`` continuation (every word
    tokenizes), then the most frequent words; ``specials`` first, in id order."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = Counter(
        word for text in _texts() for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    chars = sorted({c for word in words for c in word})
    vocab = [*specials, *chars, *(f"##{c}" for c in chars)]
    frequent = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    vocab += frequent[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=unk))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.post_processor = template(tok, cls, sep, sep)
    return tok


def byte_bpe(head: list[str], tail: list[str], merges: int = 240) -> Tokenizer:
    """GPT-2-style byte-level BPE, its merges learnt here (most frequent pair, ties by the pair):
    ``head`` specials before the 256 byte symbols, ``tail`` after the merged tokens."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    counts = Counter(w for text in _texts() for w, _ in pre.pre_tokenize_str(text))
    words = {word: list(word) for word in counts}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    learnt: list[tuple[str, str]] = []
    for _ in range(merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += counts[word]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        learnt.append(best)
        for word, symbols in words.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[word] = merged
    tokens = [*head, *alphabet, *dict.fromkeys(a + b for a, b in learnt)]
    vocab = {t: i for i, t in enumerate([*tokens, *tail])}
    tok = Tokenizer(models.BPE(vocab, learnt))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return tok


def unigram(specials: list[str], tail: list[str], words_kept: int = 300) -> Tokenizer:
    """SentencePiece-style Unigram: NFKC, runs of spaces folded, ``▁`` before each word; pieces
    are ``▁`` + the most frequent words and every character (so every text tokenizes), scored
    by log frequency. ``specials`` first in id order, ``tail`` (XLM-R's <mask>) last."""
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    counts = Counter(w for text in _texts() for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars: Counter[str] = Counter()
    for word, n in counts.items():
        for c in word:
            chars[c] += n
    frequent = sorted((w for w in counts if len(w) > 2), key=lambda w: (-counts[w], w))
    pieces = {**{w: counts[w] for w in frequent[:words_kept]}, **chars}
    total = sum(pieces.values())
    scored = sorted(pieces.items(), key=lambda p: (-p[1], p[0]))
    vocab: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    vocab += [(piece, math.log(n / total)) for piece, n in scored]
    vocab += [(s, 0.0) for s in tail]
    tok = Tokenizer(models.Unigram(vocab, unk_id=specials.index(_unk(specials)), byte_fallback=False))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


def _unk(specials: list[str]) -> str:
    return next(s for s in specials if s in ("<unk>", "[UNK]"))


def fast(cls: Any, tok: Tokenizer, max_length: int | None, **special: Any) -> Any:
    """``tok`` as the family's transformers fast tokenizer (its class goes into
    tokenizer_config.json); ``max_length`` None leaves model_max_length unset, as some hub
    checkpoints do."""
    extra = {} if max_length is None else {"model_max_length": max_length}
    return cls(tokenizer_object=tok, **special, **extra)
