"""The GroupQueryAttention rewrite of the classic families keeps the export's numbers: partial
rotary (Pythia, Phi-2), interleaved partial rotary (GPT-J), multi-query packed projection
(Falcon), no rotary, no scaling and a local window (GPT-Neo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepipe.graph import decoder_graph
from tests.decoders import export_decoder
from tests.families.classic import make_tiny_classic
from tests.graph.test_decoder_graph import run_steps

CASES = {
    "gpt_neox": ("gpt_neox", {}),
    "phi": ("phi", {}),
    "gptj": ("gptj", {}),
    "gpt_neo": ("gpt_neo", {}),
    "falcon": ("falcon", {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_rewrite_matches_the_export(case: str, tmp_path: Path) -> None:
    model_type, overrides = CASES[case]
    model_dir = make_tiny_classic(model_type, tmp_path / "hf", **overrides)
    original = export_decoder(model_dir, tmp_path / "onnx")
    rewritten = tmp_path / "gqa.onnx"
    info = decoder_graph.optimize(original, rewritten)

    assert info["skipped"] is None
    assert info["op_counts"]["GroupQueryAttention"] == 2
    # GPT-J's and Phi-2's lm_head has a bias: the slice goes before it.
    assert info["logits_to_keep"] is True
    ids = list(range(3, 27))  # 24 positions: past GPT-Neo's 8-position local window
    expected, expected_tokens = run_steps(original, ids, split=15)
    actual, tokens = run_steps(rewritten, ids, split=15)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)
    assert tokens == expected_tokens
