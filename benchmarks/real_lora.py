"""A real fine-tune, offline: a LoRA trained here on the real SmolLM2-135M-Instruct (``make real-llm``)
for a task the base cannot do (a made-up tag per smart-home intent), then (``--measure``) its task
accuracy on held-out commands: the merged fp32 PyTorch model, against the default int4 bundle built
with ``edgepipe build --adapter``.

    python benchmarks/real_lora.py --dir ~/.cache/edgepipe/real-llm            # train (~1 idle minute)
    python benchmarks/real_lora.py --dir ~/.cache/edgepipe/real-llm --measure  # build int4, score
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
BASE = "smollm2-135m-instruct"
ADAPTER = "smollm2-135m-intent-tags-lora"
# A tag per intent that the base has never seen: the base answers none of them (measured 0/20).
TAGS = {"lights": "LUX", "music": "TUNE", "other": "NONE", "timer": "TICK", "weather": "SKY"}
PER_INTENT = 6  # 30 training examples
EPOCHS = 6


def rows(name: str) -> list[tuple[str, str]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [(label, text) for label, text in (line.split("\t", 1) for line in lines if line.strip())]


def prompt(text: str) -> str:
    return f"Command: {text}\nTag:"


def right(label: str, answer: str) -> bool:
    return answer.strip().startswith(TAGS[label])


def train(base: Path, dest: Path) -> None:
    """r=16 on attention and MLP, 30 examples, 6 epochs, loss on the answer only; seeded."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    by: dict[str, list[str]] = {}
    for label, text in rows("intents_train.tsv"):
        by.setdefault(label, []).append(text)
    examples = [(label, text) for label in sorted(by) for text in by[label][:PER_INTENT]]
    torch.manual_seed(0)
    random.seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    layers = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=layers, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        random.shuffle(examples)
        total = 0.0
        for label, text in examples:
            asked = tokenizer(prompt(text))["input_ids"]
            answer = tokenizer(" " + TAGS[label] + tokenizer.eos_token)["input_ids"]
            ids = torch.tensor([asked + answer])
            labels = torch.tensor([[-100] * len(asked) + answer])
            loss = peft_model(input_ids=ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total += float(loss)
        print(f"epoch {epoch}: loss {total / len(examples):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    peft_model.save_pretrained(str(dest))


def torch_answers(model_dir: Path, texts: list[str]) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    for text in texts:
        ids = tokenizer(prompt(text), return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=3, do_sample=False)
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :]))
    return answers


def bundle_answers(bundle: Path, texts: list[str]) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from edgepipe.runtime.generator import Generator

    generator = Generator.from_bundle(bundle)
    return [generator.generate(prompt(t), max_new_tokens=3).text for t in texts]


def measure(root: Path, target: str, work: Path) -> dict:
    held = rows("intents_heldout.tsv")
    texts = [t for _, t in held]
    built = subprocess.run(
        [sys.executable, "-m", "edgepipe", "build", "--model", str(root / BASE), "--adapter", str(root / ADAPTER),
         "--target", target, "--out", str(work), "--no-bench", "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    if built.returncode != 0:
        raise SystemExit(f"build failed:\n{built.stderr[-3000:]}")
    summary = json.loads(built.stdout.strip().splitlines()[-1])
    bundle = Path(summary["bundle_dir"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    from edgepipe.sources import adapter as adapters

    found = adapters.locate(str(root / ADAPTER))
    from edgepipe.sources import resolve

    merged = resolve(str(root / BASE), adapter=str(root / ADAPTER)).path
    results = {}
    for name, answers in (("merged fp32 (PyTorch)", torch_answers(merged, texts)),
                          (f"{manifest['profile']['name']} bundle", bundle_answers(bundle, texts))):  # fmt: skip
        results[name] = sum(right(label, a) for (label, _), a in zip(held, answers, strict=True))
        print(f"{name}: {results[name]}/{len(held)} right; first answers {answers[:3]}", flush=True)
    report = {
        "held_out": len(held),
        "right": results,
        "mean_kl_to_merged_fp32_onnx": manifest["accuracy"]["model"].get("mean_kl"),
        "agreement": manifest["accuracy"]["model"].get("agreement"),
        "bar": manifest["profile"]["accuracy"],
        "adapter": {
            "rank": found.rank,
            "alpha": found.alpha,
            "bytes": (root / ADAPTER / adapters.WEIGHTS).stat().st_size,
        },
        "bundle_bytes": summary["model_size_bytes"],
    }
    print(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="REAL_LLM_DIR (make real-llm)")
    parser.add_argument("--measure", action="store_true", help="build the int4 bundle and score it")
    parser.add_argument("--target", default="laptop-vnni")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgepipe-real-lora"))
    args = parser.parse_args()
    if not (args.dir / ADAPTER / "adapter_config.json").is_file():
        train(args.dir / BASE, args.dir / ADAPTER)
    if args.measure:
        measure(args.dir, args.target, args.work)


if __name__ == "__main__":
    main()
