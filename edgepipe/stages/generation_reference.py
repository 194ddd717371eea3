"""Reference and evaluate for decoders: next-token logits on the evaluation texts.

The reference is the fp32 ONNX export (checked once against PyTorch's logits); a quantized model is
scored against it at every position of every text: top-1 next-token agreement and the mean
KL(fp32 || model) of the next-token distributions.
"""

from __future__ import annotations

import gc
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..catalog import families
from ..graph.damage import log_softmax
from ..runtime.generator import GenerationConfig, Generator
from . import digests
from .export import quiet

# Positions per text at most: the eval texts are sentences; a long --eval-data line is cut here.
MAX_TOKENS = 128
Logits = Callable[[list[int]], np.ndarray]


# The chat check: greedy answers to these, the quantized model's against the fp32 export's, with
# the first token where they part, go into the manifest (simple facts a small model gets right).
CHAT_PROMPTS = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "Who wrote Romeo and Juliet?",
    "What is 15 plus 27?",
    "Name three primary colours.",
    "Give me one tip for sleeping better.",
)
CHAT_TOKENS = 32


class NextTokenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    texts_digest: str = Field(description="sha256 of the evaluation texts, for the cache key.")
    max_tokens: int = Field(default=MAX_TOKENS, gt=1, description="Tokens per text at most.")
    chat_prompts: tuple[str, ...] = Field(
        default=CHAT_PROMPTS, description="Chat check: prompts answered greedily (chat template)."
    )
    chat_tokens: int = Field(default=CHAT_TOKENS, gt=0, description="Chat check: tokens per answer.")


class NextTokenEvaluateConfig(NextTokenConfig):
    metric: str = Field(default="next_token_agreement", description="What the bar applies to.")
    bar: float = Field(description="The profile's minimum agreement; the build fails below it.")
    max_kl: float | None = Field(default=None, description="The profile's largest mean KL.")
    max_perplexity_ratio: float | None = Field(
        default=None, description="The profile's largest perplexity ratio to the fp32 model."
    )


def problem(stats: dict[str, Any], bar: float, max_kl: float | None, max_ratio: float | None) -> str | None:
    """Why ``stats`` miss the bar, or None when they meet it."""
    if stats["agreement"] < bar:
        return f"next-token agreement {stats['agreement']} < bar {bar}"
    if max_kl is not None and stats["mean_kl"] > max_kl:
        return f"mean KL {stats['mean_kl']} > max {max_kl}"
    ratio = stats.get("perplexity_ratio")
    if max_ratio is not None and ratio is not None and ratio > max_ratio:
        return f"perplexity {ratio}x fp32's > max {max_ratio}x"
    return None


def token_ids(tokenizer: Path, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Each text's ids as the bundle's tokenizer makes them (specials included), cut to the max."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    return [ids for ids in (tok.encode(t).ids[:max_tokens] for t in texts) if len(ids) >= 2]


def onnx_logits(model: Path, tokenizer: Path, runtime: GenerationConfig) -> Logits:
    """``ids`` -> [len(ids), vocab] float32 logits of ``model`` (the bundle's own runtime)."""
    return Generator(model, tokenizer, runtime).logits


def compare(
    reference: Iterator[np.ndarray],
    model: Iterator[np.ndarray],
    ids: list[list[int]] | None = None,
) -> dict[str, Any]:
    """Agreement and KL(reference || model) over every position; per-text min and p5.

    With the texts' ``ids``, also the perplexity of each model on the texts' actual next tokens
    (exp of the mean negative log-likelihood over every predicted position) and their ratio.
    """
    per_text_agree, per_text_kl, agree, kls, max_diff = [], [], [], [], 0.0
    nll_ref, nll_model = [], []
    for n, (ref, got) in enumerate(zip(reference, model, strict=True)):
        same = ref.argmax(-1) == got.argmax(-1)
        lp, lq = log_softmax(ref), log_softmax(got)
        kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)
        agree.append(same)
        kls.append(kl)
        per_text_agree.append(float(same.mean()))
        per_text_kl.append(float(kl.mean()))
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
        if ids is not None:
            following = np.asarray(ids[n][1:])
            rows = np.arange(following.size)
            nll_ref.append(-lp[rows, following])
            nll_model.append(-lq[rows, following])
    every = np.concatenate(agree)
    stats = {
        "agreement": round(float(every.mean()), 6),
        "mean_kl": round(max(float(np.concatenate(kls).mean()), 0.0), 6),
        "agreement_min_text": round(min(per_text_agree), 6),
        "agreement_p5_text": round(float(np.percentile(per_text_agree, 5)), 6),
        "kl_max_text": round(max(per_text_kl), 6),
        "max_abs_logit_diff": round(max_diff, 6),
        "positions": int(every.size),
        "n": len(per_text_agree),
    }
    if nll_ref:
        ppl_ref = float(np.exp(np.concatenate(nll_ref).mean()))
        ppl = float(np.exp(np.concatenate(nll_model).mean()))
        stats |= {
            "perplexity": round(ppl, 4),
            "perplexity_fp32": round(ppl_ref, 4),
            "perplexity_ratio": round(ppl / ppl_ref, 6),
        }
    return stats


def torch_logits(model_dir: Path) -> Logits:
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    with quiet():
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir),
            local_files_only=True,
            torch_dtype=torch.float32,
            attn_implementation=families.torch_attention(config),
        ).eval()

    def run(ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), use_cache=False).logits
        return out[0].float().numpy()

    return run


def chat_answers(config: NextTokenConfig, generator: Generator) -> list[dict[str, Any]]:
    """Greedy answers to the chat prompts; none for a model without a chat template."""
    if generator.config.chat_template is None:
        return []
    answers = []
    for prompt in config.chat_prompts:
        done = generator.generate(prompt, chat=True, max_new_tokens=config.chat_tokens)
        answers.append({"prompt": prompt, "text": done.text, "token_ids": done.token_ids})
    return answers


def chat_check(fp32: list[dict[str, Any]], model: list[dict[str, Any]]) -> dict[str, Any]:
    """Each answer beside fp32's and the first generated token where they differ (None: same)."""
    rows = []
    for ref, got in zip(fp32, model, strict=True):
        a, b = ref["token_ids"], got["token_ids"]
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if first is None and len(a) != len(b):
            first = min(len(a), len(b))
        rows.append({"prompt": ref["prompt"], "fp32": ref["text"], "model": got["text"], "first_difference": first})
    same = sum(1 for r in rows if r["first_difference"] is None)
    return {"same": same, "n": len(rows), "answers": rows}


def reference(
    config: NextTokenConfig,
    source_dir: Path,
    fp32_model: Path,
    tokenizer: Path,
    runtime: GenerationConfig,
    texts: list[str],
    out: Path,
) -> dict[str, Any]:
    """How faithful the fp32 export is: its logits against PyTorch's on the evaluation texts; and
    its greedy answers to the chat prompts (``out/chat.json``), which each quantized model's meet."""
    ids = token_ids(tokenizer, texts, config.max_tokens)
    with tempfile.TemporaryDirectory(prefix="edgepipe-ref-") as tmp:
        # PyTorch's logits first, kept on disk: the PyTorch model and the fp32 export (each the
        # model's full size, GBs for a 1B model) are never in memory together.
        pt = torch_logits(source_dir)
        for n, i in enumerate(ids):
            np.save(Path(tmp) / f"{n}.npy", pt(i))
        del pt
        gc.collect()
        generator = Generator(fp32_model, tokenizer, runtime)
        ox = generator.logits
        stored = (np.load(Path(tmp) / f"{n}.npy", mmap_mode="r") for n in range(len(ids)))
        stats = compare(stored, (ox(i) for i in ids))
    np.save(out / "next_tokens.npy", np.concatenate([ox(i).argmax(-1) for i in ids]))
    (out / "fp32_onnx.json").write_text(json.dumps(stats, indent=2))
    chat = chat_answers(config, generator)
    (out / "chat.json").write_text(json.dumps(chat, indent=2, ensure_ascii=False))
    return {"outputs": digests(out), "fp32_onnx": {"against": "fp32 PyTorch model", **stats}}


def evaluate(
    config: NextTokenEvaluateConfig,
    fp32_model: Path,
    model: Path,
    tokenizer: Path,
    runtime: GenerationConfig,
    texts: list[str],
    reference_chat: Path,
    out: Path,
) -> dict[str, Any]:
    """Score ``model`` against the fp32 ONNX model, and its chat answers against fp32's (the
    reference stage's ``chat.json``); write ``out/evaluation.json``."""
    ids = token_ids(tokenizer, texts, config.max_tokens)
    generator = Generator(model, tokenizer, runtime)
    ref, got = onnx_logits(fp32_model, tokenizer, runtime), generator.logits
    stats = compare((ref(i) for i in ids), (got(i) for i in ids), ids)
    del ref  # the fp32 session: the model's full size
    gc.collect()
    missed = problem(stats, config.bar, config.max_kl, config.max_perplexity_ratio)
    fp32_chat = json.loads(reference_chat.read_text(encoding="utf-8"))
    result = {
        "metric": config.metric,
        "bar": config.bar,
        "max_kl": config.max_kl,
        "max_perplexity_ratio": config.max_perplexity_ratio,
        "against": "fp32 ONNX model",
        "model": stats,
        "chat": chat_check(fp32_chat, chat_answers(config, generator)) if fp32_chat else None,
        "passed": missed is None,
    }
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    return {"outputs": digests(out), **result}
