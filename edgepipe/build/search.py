"""Trying recipes: quantize + evaluate one profile, keep nodes float until the bar holds, fall back.

Every try is an Attempt; the build keeps the first that passes (or, with --search, the fastest),
and a build where none passes fails with the table of what was tried.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Profile, Target
from .runtime.embedder import EmbeddingConfig
from .stages import evaluate, quantize, sensitivity


@dataclass
class Attempt:
    """One recipe tried: what it produced and how it scored."""

    profile: str
    method: str
    label: str
    model: Path
    size_bytes: int
    accuracy: dict[str, Any]
    kept_float: list[str] = field(default_factory=list)
    problem: str | None = None  # why it cannot be used; None when it passed
    bench: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None

    @property
    def p50_ms(self) -> float | None:
        """Host-measured p50 at the bench stage's one shape, once benchmarked."""
        return self.bench["results"][0]["model"]["p50_ms"] if self.bench else None

    def row(self) -> dict[str, Any]:
        """A line of the table of what was tried (also written to the manifest)."""
        row: dict[str, Any] = {
            "profile": self.profile,
            "method": self.method,
            "kept_float": len(self.kept_float),
            "size_mb": round(self.size_bytes / 1e6, 1),
        }
        score = self.accuracy["model"]
        if self.accuracy["metric"] == "next_token_agreement":
            row.update(agreement=score["agreement"], mean_kl=score["mean_kl"])
        else:
            row.update(min_cosine=score["min"], mean_cosine=score["mean"])
        row.update(bar=self.accuracy["bar"], result=self.problem or "ok")
        if self.bench and "decode_speedup_vs_fp32" in self.bench:
            row["decode_tokens_per_s"] = self.bench["model"]["decode_tokens_per_s"]
            row["decode_speedup_vs_fp32"] = self.bench["decode_speedup_vs_fp32"]
        elif self.bench:
            (shape,) = self.bench["results"]
            row["p50_ms"] = shape["model"]["p50_ms"]
            row["speedup_vs_fp32"] = shape["speedup_vs_fp32"]
        return row


Stage = Callable[..., dict[str, Any]]


@dataclass
class Recipes:
    """What every attempt of one build shares."""

    stage: Stage  # pipeline.StageRunner
    work: Path
    target: Target
    fp32_model: Path
    reference: Path
    tokenizer: Path
    runtime: EmbeddingConfig
    texts: list[str]
    texts_digest: str
    digests: dict[str, str]
    calibration: quantize.CalibrationData
    summary: Callable[[str, str], None]  # pipeline.StageRunner.summary: the stage's done-line
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def calibration_digest(self) -> str:
        return hashlib.sha256("\n".join(self.calibration.texts).encode()).hexdigest()

    def attempt(self, profile: Profile, keep: list[str] | None = None) -> Attempt:
        """Quantize with ``profile`` (``keep`` nodes in float) and score it against the reference."""
        label = profile.name + (f"+float{len(keep)}" if keep else "")
        config = quantize.QuantizeConfig.from_profile(profile, keep, self.calibration_digest)
        quantized = self.stage(
            "quantize",
            config,
            {"fp32": self.digests["fp32"], "tokenizer": self.digests["tokenizer"]},
            lambda d: quantize.run(config, self.fp32_model, d, self.calibration),
            label=f"quantize/{label}",
        )
        model = self.work / f"quantize/{label}" / "model.onnx"
        self.summary(
            f"quantize/{label}", f"{profile.method} {quantized['size_bytes'] / 1e6:.1f} MB"
        )
        eval_cfg = evaluate.EvaluateConfig(
            bar=profile.bar("embedding").min,
            texts_digest=self.texts_digest,
            runtime=self.runtime.to_json(),
        )
        scored = self.stage(
            "evaluate",
            eval_cfg,
            {"reference": self.digests["reference"], "model": quantized["outputs"]["model.onnx"]},
            lambda d: evaluate.run(
                eval_cfg, self.reference, model, self.tokenizer, self.runtime, self.texts, d
            ),
            label=f"evaluate/{label}",
        )
        accuracy = {k: v for k, v in scored.items() if k != "outputs"}
        size = quantized["size_bytes"]
        problem = None
        if not scored["passed"]:
            problem = f"min cosine {scored['model']['min']} < bar {profile.bar('embedding').min}"
        elif size / 1e6 > self.target.budgets.model_size_mb:
            problem = f"{size / 1e6:.1f} MB > budget {self.target.budgets.model_size_mb} MB"
        result = Attempt(
            profile.name, profile.method, label, model, size, accuracy, list(keep or []), problem
        )
        self.attempts.append(result)
        return result

    def with_mixed_precision(self, profile: Profile) -> Attempt:
        """The profile as is, or with the fewest most-damaging nodes kept float that meet the bar."""
        first = self.attempt(profile)
        q = profile.quantization
        if first.passed or q is None or q.keep_float is None or profile.method != "dynamic-int8":
            return first
        ranking = self._ranking(profile, first)
        best: Attempt | None = None
        low, high = 1, min(q.keep_float.max_nodes, len(ranking))
        while low <= high:  # smallest k that passes; damage falls roughly monotonically with k
            k = (low + high) // 2
            trial = self.attempt(profile, ranking[:k])
            if trial.passed:
                best, high = trial, k - 1
            else:
                low = k + 1
        return best or self.attempts[-1]

    def _ranking(self, profile: Profile, first: Attempt) -> list[str]:
        assert profile.quantization is not None and profile.quantization.keep_float is not None
        evaluation = self.work / f"evaluate/{first.label}"
        vectors = np.load(evaluation / "embeddings.npy")
        ref = np.load(self.reference)
        per_text = np.sum(vectors * ref, axis=1) / (
            np.linalg.norm(vectors, axis=1) * np.linalg.norm(ref, axis=1)
        )
        count = profile.quantization.keep_float.probe_texts
        probe = sorted(int(i) for i in np.argsort(per_text, kind="stable")[:count])
        config = sensitivity.SensitivityConfig(
            quantization=profile.quantization,
            probe=probe,
            texts_digest=self.texts_digest,
            runtime=self.runtime.to_json(),
            calibration_digest=self.calibration_digest,
        )
        self.stage(
            "sensitivity",
            config,
            {"fp32": self.digests["fp32"], "reference": self.digests["reference"]},
            lambda d: sensitivity.run(
                config,
                self.fp32_model,
                self.reference,
                self.tokenizer,
                self.runtime,
                self.texts,
                self.calibration,
                d,
            ),
            label=f"sensitivity/{profile.name}",
        )
        ranking = json.loads((self.work / f"sensitivity/{profile.name}/ranking.json").read_text())
        worst = ranking[0]["node"] if ranking else "none"
        self.summary(f"sensitivity/{profile.name}", f"{len(ranking)} MatMuls ranked, worst {worst}")
        return [r["node"] for r in ranking]
