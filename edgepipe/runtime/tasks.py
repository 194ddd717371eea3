"""The one task vocabulary: the four task kinds, the names a manifest and runtime.json give them, and
the spellings older bundles and users write, read in one place."""

from __future__ import annotations

from enum import Enum


class Task(str, Enum):
    """A task kind, as profiles, targets and the build name it; ``manifest_name`` is the bundle's."""

    EMBEDDING = "embedding"
    GENERATION = "generation"
    CLASSIFICATION = "classification"
    RERANKING = "reranking"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def manifest_name(self) -> str:
        """The ``task`` a manifest and runtime.json record (Hugging Face's pipeline names)."""
        return _MANIFEST_NAMES[self]

    @property
    def is_head(self) -> bool:
        """A sequence-classification head on an encoder (labels or a relevance score)."""
        return self in (Task.CLASSIFICATION, Task.RERANKING)

    @classmethod
    def parse(cls, name: str) -> Task:
        """The kind for any spelling: a kind, a manifest name or an older alias."""
        found = _SPELLINGS.get(str(name).strip().lower())
        if found is None:
            raise ValueError(f"unknown task '{name}'; known: {', '.join(t.value for t in cls)}")
        return found


_MANIFEST_NAMES = {
    Task.EMBEDDING: "embedding",
    Task.GENERATION: "text-generation",
    Task.CLASSIFICATION: "text-classification",
    Task.RERANKING: "reranking",
}
# Every spelling folded here, and nowhere else: kinds, manifest names, and the aliases users type.
_SPELLINGS = {
    **{t.value: t for t in Task},
    **{name: t for t, name in _MANIFEST_NAMES.items()},
    "feature-extraction": Task.EMBEDDING,
    "sentence-similarity": Task.EMBEDDING,
    "text-generation-with-past": Task.GENERATION,
    "causal-lm": Task.GENERATION,
    "sequence-classification": Task.CLASSIFICATION,
    "text-ranking": Task.RERANKING,
}
