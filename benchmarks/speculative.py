"""Speculative decoding (prompt lookup) on and off, side by side in one run, through a bundle's own runtime.

Two kinds of prompt, in the model's chat template, greedy, 2 threads:
- grounded: a summary of, or the facts in, a held-out paragraph (benchmarks/data/heldout_paragraphs.txt,
  text edgepipe never tunes on): the answer copies runs of the prompt, which is what drafts find;
- free chat: open questions with nothing to copy, where drafts mostly miss.
Each prompt is generated with speculation forced on (``speculate=True``) and off in alternation,
ROUNDS times; the table gives the median decode tok/s of each and their ratio, whether the token ids
were identical, and the drafts checked and accepted. The goals (issue 26): >= 1.5x on grounded prompts,
>= 0.97x on free chat, token-identical output. It also prints whether the runtime's default would
speculate on this bundle (only where a multi-token pass gives one-token steps' logits: see
edgepipe/runtime/speculate.py rows_agree; an int4 build with int8 activations does not).

    python benchmarks/speculative.py --bundle dist/smollm2-135m-offgrid-laptop-avx2 [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARAGRAPHS = HERE / "data" / "heldout_paragraphs.txt"
CHAT = (
    "Write a short poem about autumn.",
    "What are three tips for learning a new language?",
    "Tell me a joke about computers.",
    "How do I make a cup of tea?",
    "Explain what a black hole is to a child.",
    "Give me some ideas for a birthday party.",
    "Why is the sky blue?",
    "What should I pack for a weekend hike?",
)
GOALS = {"grounded": 1.5, "chat": 0.97}


def prompts(count: int) -> dict[str, list[str]]:
    """``count`` grounded prompts (half summaries, half extraction) and ``count`` free-chat ones."""
    paragraphs = [p for p in PARAGRAPHS.read_text(encoding="utf-8").splitlines() if p.strip()]
    half = (count + 1) // 2
    grounded = [f"Summarize this text in two sentences.\n\n{p}" for p in paragraphs[:half]]
    grounded += [f"{p}\n\nList the facts this text states, one per line." for p in paragraphs[half:count]]
    return {"grounded": grounded, "chat": list(CHAT[:count])}


def bundle_generator(bundle: Path, threads: int) -> Any:
    """The bundle's own runtime (its edgepipe_runtime package), not the build host's copy."""
    sys.path.insert(0, str(bundle))
    module = importlib.import_module("edgepipe_runtime.generator")
    return module.Generator.from_bundle(bundle, threads=threads, max_context=2048)


def measure(generator: Any, prompt: str, rounds: int, new_tokens: int) -> dict[str, Any]:
    """One prompt with and without speculation, alternating, ``rounds`` times each."""
    plain, spec, same, last = [], [], True, {}
    for _ in range(rounds):
        a = generator.generate(prompt, chat=True, max_new_tokens=new_tokens, speculate=False)
        b = generator.generate(prompt, chat=True, max_new_tokens=new_tokens, speculate=True)
        same = same and a.token_ids == b.token_ids
        plain.append(a.timings["decode_tokens_per_s"])
        spec.append(b.timings["decode_tokens_per_s"])
        last = b.timings
    ratios = [s / p for s, p in zip(spec, plain, strict=True)]
    return {
        "tokens": len(b.token_ids),
        "plain": statistics.median(plain),
        "speculative": statistics.median(spec),
        "ratio": statistics.median(ratios),
        "identical": same,
        "drafted": last.get("drafted_tokens", 0),
        "accepted": last.get("accepted_tokens", 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a text-generation bundle")
    parser.add_argument("--prompts", type=int, default=8, help="prompts of each kind")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    generator = bundle_generator(args.bundle, args.threads)
    generator.generate("Hello", max_new_tokens=8, speculate=False)  # warm up
    print(f"default: speculation {'on' if generator.speculates(None) else 'off'} for this bundle")
    print(f"{'kind':<9} {'#':>2} {'tokens':>6} {'plain tok/s':>11} {'spec tok/s':>10} {'ratio':>6} "
          f"{'same':>5} {'accepted/drafted':>16}")  # fmt: skip
    failed, identical, total = False, 0, 0
    for kind, texts in prompts(args.prompts).items():
        ratios = []
        for i, prompt in enumerate(texts):
            r = measure(generator, prompt, args.rounds, args.new_tokens)
            ratios.append(r["ratio"])
            identical, total = identical + r["identical"], total + 1
            print(f"{kind:<9} {i:>2} {r['tokens']:>6} {r['plain']:>11.1f} {r['speculative']:>10.1f} "
                  f"{r['ratio']:>5.2f}x {str(r['identical']):>5} {r['accepted']:>7}/{r['drafted']:<8}", flush=True)  # fmt: skip
        mean = statistics.geometric_mean(ratios)
        verdict = "met" if mean >= GOALS[kind] else "NOT met"
        print(f"{kind}: decode {mean:.2f}x with speculation (geometric mean; goal >= {GOALS[kind]}x: {verdict})")
        failed |= mean < GOALS[kind]
    print(f"token ids identical with and without speculation: {identical} of {total} prompts")
    return 1 if failed or identical < total else 0


if __name__ == "__main__":
    raise SystemExit(main())
