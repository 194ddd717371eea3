"""Encoder families: what tests/test_families.py's builds rest on, asserted directly."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from edgepipe.stages import export
from tests.families.encoders import make_tiny_xlm_roberta


@pytest.mark.parametrize(
    ("config", "tokens"),
    [
        ({"model_type": "bert", "max_position_embeddings": 512}, 512),
        # RoBERTa-likes count positions from pad_token_id + 1: 514 rows hold 512 tokens.
        ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
        ({"model_type": "xlm-roberta", "max_position_embeddings": 8194, "pad_token_id": 1}, 8192),
        ({"model_type": "camembert", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
        ({"model_type": "mpnet", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
        ({"model_type": "modernbert", "max_position_embeddings": 8192}, 8192),
    ],
)
def test_longest_input_from_the_config(tmp_path, config, tokens):
    """Without a tokenizer or sentence-transformers limit, the config's position rows decide."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert export.max_length(tmp_path) == tokens
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    assert export.max_length(tmp_path) == 128


def test_cls_pooling_differs_from_mean_pooling(tmp_path):
    """The tiny XLM-R's sentence-transformers reference (CLS pooling) is far from mean pooling, so
    its fp32 bundle matching it at cosine 0.9999 (tests/test_families.py) proves the bundle pools
    as modules.json says."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgepipe.stages.embedding_reference import reference_embeddings
    from edgepipe.tasks.texts import builtin_texts

    model_dir = make_tiny_xlm_roberta(tmp_path / "tiny-xlm-roberta")
    texts = builtin_texts("embedding")[:8]
    cls = reference_embeddings(model_dir, texts, 64)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    with torch.inference_mode():
        hidden = [model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0] for t in texts]
    mean = np.stack([h.mean(0).numpy() for h in hidden])
    first = np.stack([h[0].numpy() for h in hidden])
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    assert np.abs((cls * first).sum(1) - 1).max() < 1e-5
    assert (cls * mean).sum(1).min() < 0.99


@pytest.mark.parametrize(
    ("model_type", "auto_map"),
    [
        (
            "nomic_bert",
            {"AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel"},
        ),
        ("new", {"AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel"}),
    ],
)
def test_remote_code_models_are_refused(tmp_path, model_type, auto_map):
    """nomic-embed-text (nomic_bert) and gte-*-v1.5 (new) run their own code: refused in one line
    naming --trust-remote-code (exit 4); with it, still refused, as a type edgepipe does not build."""
    config = {"model_type": model_type, "auto_map": auto_map, "architectures": ["NewModel"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = ["build", "--model", str(tmp_path), "--target", "rpi5", "--out", str(tmp_path / "out")]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 4
    line = refused.output.strip().splitlines()[-1]
    assert "needs its own Python code (auto_map)" in line and "--trust-remote-code" in line
    trusted = CliRunner().invoke(main, [*args, "--trust-remote-code"])
    assert trusted.exit_code == 4
    assert f"model_type '{model_type}' is not supported" in trusted.output.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
