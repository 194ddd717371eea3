"""Real-weight classifier and reranker heads on all-MiniLM-L6-v2, built in code, offline.

No trained classifier or cross-encoder checkpoint is on the build host, but all-MiniLM-L6-v2 (the
packaged default, a real 6-layer BERT with its pooler) is. Two heads are trained on it, the
encoder fine-tuned briefly with it (so every weight and activation is a trained model's):

- ``minilm-intents/``: BertForSequenceClassification, 5 voice-command intents (lights, timer,
  music, weather, other), on the 100 labelled commands of data/intents_train.tsv (4 epochs).
- ``minilm-reranker/``: a one-output cross-encoder (ms-marco-MiniLM-L-6-v2's shape), distilled
  from the bi-encoder: each (query, document) pair of training commands is scored
  ``10 * cosine - 3`` with all-MiniLM-L6-v2's mean-pooled embeddings (2 epochs, 800 pairs).

Then ``--measure`` builds each for rpi5, laptop-avx2 and laptop-vnni with `edgepipe build` and
reports the int8 guard's metrics against fp32 PyTorch on held-out texts (data/intents_heldout.tsv,
never trained on; the reranker's pairs come from them too) and on the built-in set: the default
recipe with its first attempt (no MatMul kept float) and a broken recipe (per-tensor s8 weights,
no outlier rescale, nothing kept float). That is how the int8 profiles' classification and
reranking bars were set.

    make real-heads                        # REAL_HEADS_DIR=... (default below); with --measure
    python benchmarks/real_heads.py --dir DIR [--measure]

Deterministic: fixed seeds, one thread, deterministic torch algorithms; a model already built is
kept (delete its directory to rebuild).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).parent / "data"
DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgepipe/real-heads"
CLASSIFIER, RERANKER = "minilm-intents", "minilm-reranker"
INTENTS = ("lights", "timer", "music", "weather", "other")
# Each CPU target with its default int8 profile.
TARGETS = {"rpi5": "arm64-int8", "laptop-avx2": "x86-avx2-int8", "laptop-vnni": "x86-vnni-int8"}
LOOSE = {"min": 0.001, "max_kl": 100.0, "max_score_error": 100.0}


def labelled(name: str) -> list[tuple[str, str]]:
    rows = (line.split("\t") for line in (DATA / name).read_text().splitlines() if line.strip())
    return [(label, text) for label, text in rows]


def _setup(seed: int = 0) -> None:
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def _base() -> Path:
    from edgepipe.sources import packaged_default

    return packaged_default()


def _train(model, tokenizer, batches, epochs: int, lr: float, loss_fn) -> None:
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(epochs):
        for args, target in batches():
            enc = tokenizer(*args, padding=True, truncation=True, max_length=128, return_tensors="pt")
            loss = loss_fn(model(**enc).logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def _save(model, tokenizer, dest: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(dest)
    return dest


def make_classifier(dest: Path) -> Path:
    """The 5-intent classifier, fine-tuned from all-MiniLM-L6-v2 (encoder and pooler)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    _setup()
    tokenizer = AutoTokenizer.from_pretrained(str(_base()))
    model = BertForSequenceClassification.from_pretrained(
        str(_base()),
        num_labels=len(INTENTS),
        id2label=dict(enumerate(INTENTS)),
        label2id={n: i for i, n in enumerate(INTENTS)},
    )
    rows = labelled("intents_train.tsv")

    def batches():
        order = random.sample(rows, len(rows))
        for i in range(0, len(order), 16):
            chunk = order[i : i + 16]
            target = torch.tensor([INTENTS.index(label) for label, _ in chunk])
            yield ([text for _, text in chunk],), target

    _train(model, tokenizer, batches, 4, 1e-4, torch.nn.functional.cross_entropy)
    return _save(model, tokenizer, dest)


def _embed(texts: list[str]):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(_base()))
    model = AutoModel.from_pretrained(str(_base())).eval()
    with torch.inference_mode():
        enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1)


def training_pairs() -> list[tuple[str, str, str]]:
    """Each training command as a query against 4 commands of its intent and 4 of others."""
    rows = labelled("intents_train.tsv")
    rng = random.Random(1)
    pairs = []
    for label, query in rows:
        same = [t for lab, t in rows if lab == label and t != query]
        other = [t for lab, t in rows if lab != label]
        for doc in rng.sample(same, 4) + rng.sample(other, 4):
            pairs.append((query, doc, label))
    return pairs


def make_reranker(dest: Path) -> Path:
    """A one-output cross-encoder distilled from the bi-encoder's cosine (10 * cos - 3)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    _setup()
    pairs = training_pairs()
    texts = sorted({t for q, d, _ in pairs for t in (q, d)})
    vectors = dict(zip(texts, _embed(texts), strict=True))
    targets = [10.0 * float(vectors[q] @ vectors[d]) - 3.0 for q, d, _ in pairs]
    tokenizer = AutoTokenizer.from_pretrained(str(_base()))
    model = BertForSequenceClassification.from_pretrained(str(_base()), num_labels=1)
    data = list(zip(pairs, targets, strict=True))

    def batches():
        order = random.sample(data, len(data))
        for i in range(0, len(order), 32):
            chunk = order[i : i + 32]
            queries = [q for (q, _, _), _ in chunk]
            docs = [d for (_, d, _), _ in chunk]
            yield (queries, docs), torch.tensor([[t] for _, t in chunk])

    _train(model, tokenizer, batches, 2, 5e-5, torch.nn.functional.mse_loss)
    return _save(model, tokenizer, dest)


def heldout_pairs() -> list[tuple[str, str]]:
    """Two held-out commands per intent as queries, each against 3 held-out commands of its
    intent and 5 of others (80 pairs, 10 queries)."""
    rows = labelled("intents_heldout.tsv")
    rng = random.Random(2)
    pairs = []
    for intent in INTENTS:
        mine = [t for lab, t in rows if lab == intent]
        for query in mine[:2]:
            same = rng.sample([t for t in mine if t != query], 3)
            other = rng.sample([t for lab, t in rows if lab != intent], 5)
            pairs.extend((query, doc) for doc in same + other)
    return pairs


def eval_files(work: Path) -> dict[str, Path]:
    """The held-out texts (one per line) and pairs (JSONL) for --eval-data."""
    texts, pairs = work / "heldout_texts.txt", work / "heldout_pairs.jsonl"
    texts.write_text("".join(t + "\n" for _, t in labelled("intents_heldout.tsv")))
    pairs.write_text("".join(json.dumps({"query": q, "document": d}) + "\n" for q, d in heldout_pairs()))
    return {CLASSIFIER: texts, RERANKER: pairs}


def build(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, make in ((CLASSIFIER, make_classifier), (RERANKER, make_reranker)):
        dest = root / name
        if not (dest / "config.json").is_file():
            print(f"training {name} ...", file=sys.stderr)
            make(dest)
        made[name] = dest
    return made


def sanity(models: dict[str, Path]) -> dict[str, float]:
    """fp32 quality on held-out data: intent accuracy; the reranker's mean per-query Spearman
    with the bi-encoder teacher."""
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = {}
    rows = labelled("intents_heldout.tsv")
    with torch.inference_mode():
        tok = AutoTokenizer.from_pretrained(str(models[CLASSIFIER]))
        model = AutoModelForSequenceClassification.from_pretrained(str(models[CLASSIFIER]))
        enc = tok([t for _, t in rows], padding=True, return_tensors="pt")
        predicted = model(**enc).logits.argmax(-1).tolist()
        out["classifier_heldout_accuracy"] = float(
            np.mean([INTENTS[p] == lab for p, (lab, _) in zip(predicted, rows, strict=True)])
        )
        pairs = heldout_pairs()
        tok = AutoTokenizer.from_pretrained(str(models[RERANKER]))
        model = AutoModelForSequenceClassification.from_pretrained(str(models[RERANKER]))
        enc = tok([q for q, _ in pairs], [d for _, d in pairs], padding=True, return_tensors="pt")
        scores = model(**enc).logits[:, 0].numpy()
    texts = sorted({t for p in pairs for t in p})
    vectors = dict(zip(texts, _embed(texts), strict=True))
    teacher = np.array([float(vectors[q] @ vectors[d]) for q, d in pairs])
    rhos = [spearmanr(scores[i : i + 8], teacher[i : i + 8])[0] for i in range(0, len(pairs), 8)]
    out["reranker_heldout_spearman_vs_teacher"] = float(np.mean(rhos))
    return {k: round(v, 4) for k, v in out.items()}


def _profiles(dest: Path) -> None:
    """measure-<profile>: the target's default int8 recipe with bars no build misses (so the
    first attempt, nothing kept float, is what is scored); broken-int8: per-tensor s8 weights, no
    rescale, nothing kept float."""
    import yaml

    repo = Path(__file__).resolve().parents[1] / "profiles"
    dest.mkdir(parents=True, exist_ok=True)
    loose = {
        "classification": {"metric": "label_agreement", "min": LOOSE["min"], "max_kl": 100.0},
        "reranking": {"metric": "rank_correlation", "min": LOOSE["min"], "max_score_error": 100.0},
    }
    for name in TARGETS.values():
        profile = yaml.safe_load((repo / f"{name}.yaml").read_text())
        profile.update(name=f"measure-{name}", task_accuracy=loose)
        profile.pop("fallbacks", None)
        (dest / f"measure-{name}.yaml").write_text(yaml.safe_dump(profile))
        if name == "x86-avx2-int8":
            q = dict(profile["quantization"], per_channel=False, weight_type="int8")
            for key in ("smooth_alpha", "keep_float"):
                q.pop(key, None)
            profile.update(name="broken-int8", quantization=q, description="per-tensor s8, nothing kept")
            (dest / "broken-int8.yaml").write_text(yaml.safe_dump(profile))


def edgepipe_build(model: Path, target: str, out: Path, *args: str) -> dict:
    cmd = [str(Path(sys.executable).parent / "edgepipe"), "build", "--model", str(model)]
    cmd += ["--target", target, "--out", str(out), "--no-bench", "--json", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 5):
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}


def measure(models: dict[str, Path], work: Path) -> list[dict]:
    profiles = work / "profiles"
    _profiles(profiles)
    held = eval_files(work)
    rows = []
    for name, model in models.items():
        for eval_name, data in (("held-out", ["--eval-data", str(held[name])]), ("built-in", [])):
            for target, default in TARGETS.items():
                for profile in (f"measure-{default}", "broken-int8"):
                    out = work / "dist"
                    got = edgepipe_build(model, target, out, "-p", profile, "--profiles-dir", str(profiles), *data)
                    manifest = json.loads((Path(got["bundle_dir"]) / "manifest.json").read_text())
                    fp32 = manifest["accuracy"]["fp32_onnx"]
                    shutil.rmtree(out, ignore_errors=True)
                    acc = got["attempts"][0]
                    row = {
                        "model": name,
                        "eval": eval_name,
                        "target": target,
                        "profile": profile,
                        **_metrics(got["accuracy"]),
                        "size_mb": acc.get("size_mb"),
                        "fp32_onnx_max_logit_diff": fp32["max_abs_logit_diff"],
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print(table(rows))
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "n"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _metrics(accuracy: dict) -> dict:
    model = accuracy.get("model", accuracy)
    keys = ("agreement", "mean_kl", "max_kl", "max_prob_error", "min_spearman", "mean_spearman", "max_score_error", "n")
    return {k: model[k] for k in keys if k in model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--measure", action="store_true", help="build and report the metrics")
    args = parser.parse_args()
    models = build(args.dir)
    print(json.dumps(sanity(models)))
    if args.measure:
        measure(models, args.dir / "measure")


if __name__ == "__main__":
    main()
