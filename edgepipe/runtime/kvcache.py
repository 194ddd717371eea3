"""A KV cache in one preallocated buffer per layer, written in place by GroupQueryAttention.

The plain loop hands every ``present.*`` tensor back as the next step's ``past_key_values.*``: each
step the attention copies the whole cache into a new tensor one token longer (~46 MB a token for
SmolLM2-135M at 1,000 tokens). When ``past_key_values.N.*`` and ``present.N.*`` are one buffer of
``max_context`` positions, onnxruntime's GroupQueryAttention (``past_present_share_buffer``) writes
only the new positions, at ``seqlens_k + 1 - sequence_length`` onwards, and reads the first
``total_sequence_length``. The graph rewrite derives both from ``attention_mask``, so a step feeds
the new tokens, their positions and a mask as long as the context: nothing else moves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Model metadata the GroupQueryAttention rewrite writes: its attention updates a shared buffer.
KV_CACHE_KEY = "edgepipe.kv_cache"
SHARED_BUFFER = "shared-buffer"
ATTENTION_HEADS_KEY = "edgepipe.attention_heads"
PAST, PRESENT = "past_key_values.", "present."
# An input the rewrite adds (default 0, every position): the lm_head reads the last N positions.
LOGITS_TO_KEEP = "logits_to_keep"
LAST = np.array([1], dtype=np.int64)
# A prompt is read this many tokens at a time at most: onnxruntime's attention scratch is
# heads x chunk x max_context floats and the logits chunk x vocab, so a long prompt in one pass
# would need hundreds of MB more than the cache itself. Chunks are cut smaller until both fit.
PREFILL_CHUNK = 512
PREFILL_SCRATCH_BYTES = 64 << 20
# The smallest context --max-context takes, and the default's floor when the target's RAM is small.
MIN_CONTEXT = 16


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, itemsize: int) -> int:
    """What one position of the cache takes: a key and a value per layer."""
    return 2 * num_layers * num_kv_heads * head_dim * itemsize


def default_max_context(max_length: int, per_token: int, ram_mb: float | None) -> int:
    """The model's context, cut to what ``ram_mb`` (the target's budget) holds of cache."""
    if ram_mb is None:
        return max_length
    fits = int(ram_mb * (1 << 20)) // per_token
    return max(min(max_length, MIN_CONTEXT), min(max_length, fits))


def prefill_chunk(max_context: int, heads: int, vocab: int, itemsize: int = 4) -> int:
    """Tokens a prefill pass reads at most, so that its scratch stays near PREFILL_SCRATCH_BYTES
    (``vocab`` 0: the model computes the last position's logits alone)."""
    per_token = max(heads * max_context * 4, vocab * itemsize, 1)
    return max(1, min(PREFILL_CHUNK, PREFILL_SCRATCH_BYTES // per_token))


def keeps_last_logits(session: Any) -> bool:
    """Whether the model takes ``logits_to_keep`` (an input with a default value)."""
    return any(i.name == LOGITS_TO_KEEP for i in session.get_overridable_initializers())


def shares_buffer(session: Any) -> tuple[bool, int]:
    """Whether the model's attention updates a shared cache in place, and its attention heads."""
    meta = session.get_modelmeta().custom_metadata_map
    heads = meta.get(ATTENTION_HEADS_KEY, "0")
    return meta.get(KV_CACHE_KEY) == SHARED_BUFFER, int(heads) if heads.isdigit() else 0


class SharedCache:
    """One ``[1, kv_heads, max_context, head_dim]`` buffer per cache tensor, bound once with IO
    binding as both the past input and the present output of one session."""

    def __init__(
        self,
        session: Any,
        past_names: list[str],
        shape: tuple[int, int, int, int],
        dtype: Any,
        has_positions: bool,
    ) -> None:
        from onnxruntime import OrtValue

        self.session, self.max_context = session, shape[2]
        self.binding = session.io_binding()
        self.has_positions = has_positions
        self.keeps_last, self.kept = keeps_last_logits(session), 0
        self._keep(1)  # a generation reads the last position's logits alone
        # np.zeros maps untouched pages lazily: the process grows with the context actually used.
        self.arrays = {name: np.zeros(shape, dtype=dtype) for name in past_names}
        self.binding.bind_output("logits")  # bound first: get_outputs()[0]
        for name, array in self.arrays.items():
            value = OrtValue.ortvalue_from_numpy(array)  # on the CPU: the array's own memory
            self.binding.bind_ortvalue_input(name, value)
            self.binding.bind_ortvalue_output(PRESENT + name[len(PAST) :], value)
        self._mask = np.ones((1, self.max_context), dtype=np.int64)
        self._positions = np.arange(self.max_context, dtype=np.int64)[None, :]

    def _keep(self, last: int) -> None:
        """Bind ``logits_to_keep``: the lm_head reads the last ``last`` positions."""
        if self.keeps_last and last != self.kept:
            from onnxruntime import OrtValue

            # The OrtValue shares the array's memory: it stays referenced while bound. By OrtValue:
            # bind_cpu_input looks the name up among the inputs without a default.
            self._kept_value = LAST if last == 1 else np.array([last], dtype=np.int64)
            self.binding.bind_ortvalue_input(LOGITS_TO_KEEP, OrtValue.ortvalue_from_numpy(self._kept_value))
            self.kept = last

    def forward(self, ids: np.ndarray, start: int, last: int = 1) -> np.ndarray:
        """Logits [1, n, vocab] of the last ``last`` positions at least (all, if the model cannot
        say) for ``ids`` at positions start.., the cache holding 0..start-1. What lies past
        ``start + len(ids)`` is never read: a rollback is the next call's smaller ``start``."""
        end = start + ids.shape[1]
        self._keep(last)
        if end > self.max_context:
            raise ValueError(f"position {end - 1} is past the cache's {self.max_context}")
        self.binding.bind_cpu_input("input_ids", ids)
        self.binding.bind_cpu_input("attention_mask", self._mask[:, :end])
        if self.has_positions:
            self.binding.bind_cpu_input("position_ids", self._positions[:, start:end])
        self.binding.bind_output("logits")  # unallocated again: each run sizes its own
        self.session.run_with_iobinding(self.binding)
        return np.asarray(self.binding.get_outputs()[0].numpy())
