"""The one recipe search for every task kind: try each profile, keep nodes float until the bar
holds, fall back; with --search, measure every passing one and keep the cheapest.

A task supplies how to quantize a recipe, score it, tell whether it passes, rank nodes for keeping
float, and measure it (TaskRecipes); the loop, the Attempt table and the guard error are here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..catalog.config import Profile
from ..errors import ConfigError, GuardError
from .spec import BuildSpec


@dataclass
class Attempt:
    """One recipe tried: what it produced and how it scored."""

    profile: str
    method: str
    label: str
    model: Path
    size_bytes: int
    accuracy: dict[str, Any]
    kept: list[str] = field(default_factory=list)  # MatMuls kept above the profile's precision
    problem: str | None = None  # why it cannot be used; None when it passed
    kept_as: str = "float"  # what ``kept`` are: "float" (encoders) or "8bit" (decoders' int4)
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
            f"kept_{self.kept_as}": len(self.kept),
            "size_mb": round(self.size_bytes / 1e6, 1),
        }
        score = self.accuracy["model"]
        metric = self.accuracy["metric"]
        if metric in ("next_token_agreement", "label_agreement"):
            row.update(agreement=score["agreement"], mean_kl=score["mean_kl"])
        elif metric == "rank_correlation":
            row.update(min_spearman=score["min_spearman"], max_score_error=score["max_score_error"])
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


class TaskRecipes(Protocol):
    """What differs per task kind when trying recipes."""

    # How the score reads in the guard error: "min cosine", "next-token agreement".
    score_name: str
    # What a kept node becomes, in attempt labels: "float" (int8 embeddings), "8bit" (int4 decoders).
    kept_as: str

    def quantize(self, profile: Profile, keep: list[str] | None, label: str) -> tuple[Path, dict[str, Any]]:
        """The quantize stage's model file and record for ``profile`` (``keep`` nodes float)."""

    def score(self, profile: Profile, label: str, model: Path, quantized: dict[str, Any]) -> dict:
        """The evaluate stage's accuracy record of ``model`` (its "model", "metric", "bar")."""

    def problem(self, profile: Profile, accuracy: dict[str, Any], size_bytes: int) -> str | None:
        """Why the attempt cannot be used (its bar or a budget missed); None when it passes."""

    def best(self, attempt: Attempt) -> float:
        """The attempt's score, larger is better: the guard error names the best one."""

    def kept_from_start(self, profile: Profile) -> list[str]:
        """Nodes the profile keeps at higher precision from its first attempt on (often none)."""

    def ranking(self, profile: Profile, first: Attempt) -> tuple[list[str], int] | None:
        """Nodes most damaging first and how many may be kept float; None: no keep_float here."""

    def evaluated(self, attempt: Attempt, profile: Profile) -> str:
        """The evaluate stage's done-line for the attempt a profile ends with."""

    def measure(self, attempt: Attempt) -> dict[str, Any]:
        """Bench the attempt (host-measured); stores and returns ``attempt.bench``."""

    def cost(self, attempt: Attempt) -> float:
        """What --search minimises among measured passing attempts."""


def over_budget(size_bytes: int, budget_mb: float | None) -> str | None:
    """Why a model of ``size_bytes`` misses the target's size budget, or None (no budget: None)."""
    if budget_mb is not None and size_bytes / 1e6 > budget_mb:
        return f"{size_bytes / 1e6:.1f} MB > budget {budget_mb} MB"
    return None


def attempts_table(attempts: list[Attempt]) -> list[dict[str, Any]]:
    return [a.row() for a in attempts]


@dataclass
class Search:
    """Every attempt of one build, tried through one task's recipes."""

    recipes: TaskRecipes
    summary: Callable[[str, str], None]  # StageRunner.summary: a stage's done-line
    attempts: list[Attempt] = field(default_factory=list)

    def attempt(self, profile: Profile, keep: list[str] | None = None) -> Attempt:
        """Quantize with ``profile`` (``keep`` nodes in float) and score it."""
        label = profile.name + (f"+{self.recipes.kept_as}{len(keep)}" if keep else "")
        model, quantized = self.recipes.quantize(profile, keep, label)
        accuracy = self.recipes.score(profile, label, model, quantized)
        size = quantized["size_bytes"]
        problem = self.recipes.problem(profile, accuracy, size)
        result = Attempt(
            profile.name, profile.method, label, model, size, accuracy, list(keep or []), problem,
            kept_as=self.recipes.kept_as,
        )  # fmt: skip
        self.attempts.append(result)
        return result

    def with_mixed_precision(self, profile: Profile) -> Attempt:
        """The profile as is (with the nodes it always keeps), or with the fewest most-damaging
        nodes kept that meet the bar."""
        start = self.recipes.kept_from_start(profile)
        first = self.attempt(profile, start or None)
        ranked = None if first.passed else self.recipes.ranking(profile, first)
        if ranked is None:
            return first
        ranking, max_nodes = ranked
        best: Attempt | None = None
        low, high = len(start) + 1, min(max_nodes, len(ranking))
        while low <= high:  # smallest k that passes; damage falls roughly monotonically with k
            k = (low + high) // 2
            trial = self.attempt(profile, ranking[:k])
            if trial.passed:
                best, high = trial, k - 1
            else:
                low = k + 1
        return best or self.attempts[-1]

    def run(self, spec: BuildSpec, profiles: list[Profile]) -> Attempt:
        """Each profile in turn until one passes (with --search: all of them); the one to bundle."""
        results: list[Attempt] = []  # per profile: the attempt it ends with
        for profile in profiles:
            tried = self.with_mixed_precision(profile)
            results.append(tried)
            self.summary(f"evaluate/{tried.label}", self.recipes.evaluated(tried, profile))
            if tried.passed and not spec.search:
                break
        passing = [a for a in results if a.passed]
        if not passing:
            raise GuardError(
                f"no recipe met its bar and the target's budgets ({len(self.attempts)} tried, best "
                f"{self.recipes.score_name} {max(self.recipes.best(a) for a in self.attempts)}); "
                "see the table above, lower the bar in a profile of your own, or use --profile fp32",
                details=attempts_table(self.attempts),
            )
        return choose(spec, passing, self.recipes.measure, self.recipes.cost)


def choose(
    spec: BuildSpec,
    passing: list[Attempt],
    measure: Callable[[Attempt], object],
    cost: Callable[[Attempt], float],
) -> Attempt:
    """The first passing attempt, benchmarked unless --no-bench; with --search, every passing one
    benchmarked and the one of least ``cost`` (the first of equals) kept."""
    if spec.search and not spec.bench:
        raise ConfigError("--search picks the fastest recipe, so it needs the bench stage: drop --no-bench")
    if spec.search:
        for attempt in passing:
            measure(attempt)
        return min(passing, key=cost)
    if spec.bench:
        measure(passing[0])
    return passing[0]
