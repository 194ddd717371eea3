"""Fixtures: tiny random-weight models built in code, and helpers to build bundles from them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEST_PROFILE = """\
name: tiny-int8
description: dynamic int8 with a bar a random 2-layer model can meet
method: dynamic-int8
quantization:
  op_types: [MatMul]
  per_channel: true
accuracy:
  min: 0.5
"""


def train_wordpiece(texts: list[str], vocab_size: int = 400):
    """A BERT-style WordPiece tokenizer trained on ``texts`` (no download)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def make_tiny_bert(dest: Path, seed: int = 0) -> Path:
    """Save a 2-layer, hidden-32 random BERT and its tokenizer to ``dest``."""
    import torch
    from transformers import BertConfig, BertModel

    from edgepipe.tasks.texts import builtin_texts

    tokenizer = train_wordpiece(builtin_texts("embedding"))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Builds in tests (and the CLIs they start) use a cache of their own, never ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["EDGEPIPE_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture
def tiny_bert(tiny_bert_master: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model, safe for a test to damage."""
    return Path(shutil.copytree(tiny_bert_master, tmp_path / "tiny-bert"))


@pytest.fixture(scope="session")
def profiles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("profiles")
    (d / "tiny-int8.yaml").write_text(TEST_PROFILE)
    return d


@pytest.fixture(scope="session")
def tiny_bundle(
    tiny_bert_master: Path,
    profiles_dir: Path,
    private_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
):
    """One build of the tiny model for laptop-avx2, shared by the tests that only read it.

    Built through the private stage cache, where `edgepipe bench` finds its fp32 export.
    """
    from edgepipe import catalog
    from edgepipe.cache import StageCache
    from edgepipe.pipeline import BuildSpec, build

    spec = BuildSpec(
        target=catalog.targets().load("laptop-avx2"),
        profile=catalog.profiles([profiles_dir]).load("tiny-int8"),
        out=tmp_path_factory.mktemp("dist"),
        model=str(tiny_bert_master),
        bench_runs=3,
        cache=StageCache(private_cache),
    )
    return build(spec)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests (real models, minutes each) run only when asked for: `-m slow` (make test-slow)."""
    if "slow" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("slow") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
