"""Text generation from an ONNX decoder with a KV cache: prefill the prompt once, then one token a step.

The model is optimum's ``text-generation-with-past`` export, driven by the input names the session
reports (``input_ids``, ``attention_mask`` and ``position_ids`` where present,
``past_key_values.{i}.key|value``), so a graph rewrite that keeps those names keeps working.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from .embedder import host_threads, open_session
from .generation_config import Generation, GenerationConfig
from .integrity import RUNTIME_CONFIG
from .kvcache import (
    LAST,
    LOGITS_TO_KEEP,
    MIN_CONTEXT,
    SharedCache,
    default_max_context,
    keeps_last_logits,
    kv_bytes_per_token,
    prefill_chunk,
    shares_buffer,
)
from .sampling import (
    GenerationError,
    OptionError,
    Sampler,
    TextStream,
    check_options,
    token_logprobs,
)
from .speculate import PromptLookup, rows_agree

if TYPE_CHECKING:
    from .assistant.grammar import Constraint

PAST = "past_key_values."
PRESENT = "present."
# The cache's element types: float, and int8 with scales inside the model (graph/kv_cache.py).
_CACHE_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8}


class PromptError(GenerationError):
    """A prompt the model cannot take: empty, or longer than its context."""


class Generator:
    """Generates text with one onnxruntime session, created once with its fixed inputs."""

    drafter: Callable[[list[int]], PromptLookup] = PromptLookup  # speculation's guesses

    def __init__(
        self,
        model: Path,
        tokenizer: Path,
        config: GenerationConfig,
        threads: int | None = None,
        spin: bool = True,
        max_context: int | None = None,
    ) -> None:
        self.config = config
        intra = host_threads(config.intra_op_threads) if threads is None else threads
        self.session = open_session(model, intra, config.inter_op_threads, config.providers, spin)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith(PAST)]
        if not self.past_names or "input_ids" not in inputs:
            raise GenerationError(f"{model}: not a decoder with a KV cache (no input_ids/past_key_values inputs)")
        self.output_names = ["logits"] + [PRESENT + n[len(PAST) :] for n in self.past_names]
        self.kv_dtype = _CACHE_TYPES.get(inputs[self.past_names[0]].type, np.float32)
        self.has_mask = "attention_mask" in inputs
        self.has_positions = "position_ids" in inputs
        per_token = kv_bytes_per_token(
            config.num_layers,
            config.num_kv_heads,
            config.head_dim,
            np.dtype(self.kv_dtype).itemsize,
        )
        default = default_max_context(config.max_length, per_token, config.ram_mb)
        if max_context is not None and not MIN_CONTEXT <= max_context <= config.max_length:
            raise OptionError(
                f"max_context must be {MIN_CONTEXT} to the model's {config.max_length} tokens (got {max_context})"
            )
        # Prompt and generated tokens together; the in-place cache holds exactly this many.
        self.max_context = max_context or default
        vocab = self.session.get_outputs()[0].shape[-1]
        shared, heads = shares_buffer(self.session)
        self.last_only = keeps_last_logits(self.session)
        self.prefill_chunk = prefill_chunk(
            self.max_context if shared else 0,
            heads or config.num_kv_heads,
            0 if self.last_only else vocab if isinstance(vocab, int) else 1,
        )
        self.cache: SharedCache | None = None
        if shared and self.has_mask:
            shape = (1, config.num_kv_heads, self.max_context, config.head_dim)
            self.cache = SharedCache(self.session, self.past_names, shape, self.kv_dtype, self.has_positions)
        # Views of these feed every step without allocating: mask[:, :n], positions[:, a:b].
        self._mask = np.ones((1, config.max_length), dtype=np.int64)
        self._positions = np.arange(config.max_length, dtype=np.int64)[None, :]
        empty = np.zeros((1, config.num_kv_heads, 0, config.head_dim), dtype=self.kv_dtype)
        self._empty_past = {name: empty for name in self.past_names}
        self.tokenizer_path = tokenizer  # the grammar library reads it too
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.eos = frozenset(config.eos_token_ids)
        self._template: Any = None
        self._rows_agree: bool | None = None  # speculates(None)'s probe, run once

    @classmethod
    def from_bundle(cls, root: Path, threads: int | None = None, max_context: int | None = None) -> Generator:
        config = GenerationConfig.load(root / RUNTIME_CONFIG)
        return cls(
            root / "model" / "model.onnx",
            root / "tokenizer" / "tokenizer.json",
            config,
            threads,
            max_context=max_context,
        )

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        """The prompt's ids; with ``chat``, as one user message in the model's chat template."""
        if not chat:
            return list(self.tokenizer.encode(prompt).ids)
        return self.encode_messages([{"role": "user", "content": prompt}])

    @property
    def template(self) -> Any:
        """The model's ChatTemplate (jinja2 imported on first use), or None without one."""
        if self._template is None and self.config.chat_template is not None:
            from .assistant.template import ChatTemplate, TemplateError

            try:
                self._template = ChatTemplate(self.config.chat_template, self.config.special_tokens)
            except TemplateError as exc:
                raise OptionError(f"runtime.json's chat template: {exc}") from None
        return self._template

    def chat_off(self) -> str | None:
        """Why this bundle cannot render conversations; None when it can."""
        if self.config.chat_template is not None:
            return None
        return self.config.chat_off or "this model has no chat template"

    def render_messages(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text of OpenAI-style messages in the model's own chat template."""
        from .assistant.template import TemplateError

        off = self.chat_off()
        if off is not None:
            raise OptionError(f"chat is off for this bundle: {off}")
        try:
            text: str = self.template.render(
                list(messages),
                tools=list(tools) if tools else None,
                add_generation_prompt=add_generation_prompt,
                **(template_kwargs or {}),
            )
        except TemplateError as exc:
            raise OptionError(str(exc)) from None
        return text

    def encode_messages(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """The ids of the rendered conversation, a reply to follow. The text carries its own special
        tokens (a BOS included where the template writes one), as apply_chat_template(tokenize=True)
        encodes it: none are added."""
        text = self.render_messages(messages, tools, template_kwargs)
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _forward(
        self, ids: np.ndarray, start: int, past: dict[str, np.ndarray], last: bool = False
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits [1, len, vocab] (``last``: [1, 1, vocab] where the model can) and the new cache
        for ``ids`` at positions start.. after ``past``."""
        end = start + ids.shape[1]
        feeds: dict[str, np.ndarray] = {"input_ids": ids, **past}
        if last and self.last_only:
            feeds[LOGITS_TO_KEEP] = LAST
        if self.has_mask:
            feeds["attention_mask"] = self._mask[:, :end]
        if self.has_positions:
            feeds["position_ids"] = self._positions[:, start:end]
        # Plain run() with numpy: measured faster per step than OrtValues or IO binding here,
        # and onnxruntime hands the present tensors back without a copy.
        logits, *presents = self.session.run(self.output_names, feeds)
        return logits, dict(zip(self.past_names, presents, strict=True))

    def _prefill(self, ids: Sequence[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The last prompt token's logits [vocab] and the plain path's cache, a chunk at a time."""
        batch = np.asarray([list(ids)], dtype=np.int64)
        past, size = self._empty_past, self.prefill_chunk
        for start in range(0, len(ids), size):
            chunk = batch[:, start : start + size]
            if self.cache is not None:
                logits = self.cache.forward(chunk, start)
            else:
                logits, past = self._forward(chunk, start, past, last=True)
        return logits[0, -1], past

    def _pass(
        self, tokens: list[int], position: int, past: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits [n, vocab] of ``tokens`` at position.. in one pass, and the plain path's cache."""
        batch, n = np.asarray([tokens], dtype=np.int64), len(tokens)
        if self.cache is not None:
            return self.cache.forward(batch, position, last=n)[0, -n:], past
        logits, past = self._forward(batch, position, past)
        return logits[0], past

    def _verify(
        self, tokens: list[int], position: int, past: dict[str, np.ndarray], sample: Sampler
    ) -> tuple[list[int], dict[str, np.ndarray]]:
        """The current token and its drafts in one pass at ``position``: the drafts the model's own
        choices agree with, then its choice after them; the cache keeps exactly those positions."""
        logits, past = self._pass(tokens, position, past)
        kept: list[int] = []
        for row, guess in zip(logits, [*tokens[1:], None], strict=True):
            kept.append(sample(row))
            if kept[-1] != guess:
                break
        if self.cache is None and len(kept) < len(tokens):  # drop the rejected drafts' positions
            end = position + len(kept)
            past = {name: np.ascontiguousarray(value[:, :, :end]) for name, value in past.items()}
        return kept, past

    def speculates(self, speculate: bool | None) -> bool:
        """``speculate`` as asked; None: whether a pass over several tokens gives each the logits a
        one-token step gives it, bit for bit, so that greedy output stays the same."""
        if speculate is not None:
            return speculate
        if self._rows_agree is None:
            self._rows_agree = rows_agree(self._probe, self.max_context)
        return self._rows_agree

    def _probe(self, prefix: list[int], tokens: list[int], together: bool) -> np.ndarray:
        """Logits of ``tokens`` after ``prefix``, fed in one pass or a token a step."""
        _, past = self._prefill(prefix)
        rows, position = [], len(prefix)
        for chunk in [tokens] if together else [[t] for t in tokens]:
            logits, past = self._pass(chunk, position, past)
            rows.append(np.array(logits))
            position += len(chunk)
        return np.concatenate(rows)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """[len(ids), vocab] float32 logits of one forward pass with an empty KV cache."""
        if not 0 < len(ids) <= self.config.max_length:
            raise PromptError(f"need 1 to {self.config.max_length} ids, got {len(ids)}")
        batch = np.asarray([list(ids)], dtype=np.int64)
        logits, _ = self._forward(batch, 0, self._empty_past)
        return np.asarray(logits[0], dtype=np.float32)

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        chat: bool = False,
        on_text: Callable[[str], None] | None = None,
        logprobs: int | None = None,
        speculate: bool | None = None,
        on_token: Callable[[int], None] | None = None,
        constraint: Constraint | None = None,
    ) -> Generation:
        """Generate up to ``max_new_tokens`` after ``prompt`` (text, or ids used as they are); with
        ``logprobs`` (0-20), each token's log-probability and that many alternatives too;
        ``speculate``: draft by prompt lookup (None: where it leaves greedy output unchanged).

        ``constraint`` (a grammar's state) masks each step's logits and follows each token; the
        generation ends when its grammar is complete ("grammar"). ``on_token`` sees each new id."""
        started = time.perf_counter()
        check_options(max_new_tokens, temperature, top_k, top_p, seed, stop)
        if isinstance(prompt, str):
            ids = self.encode(prompt, chat)
        elif chat:
            raise OptionError("chat needs a text prompt, not token ids")
        else:
            ids = [int(i) for i in prompt]
        limit = self.max_context
        if not ids:
            raise PromptError("the prompt is empty: it encodes to no tokens")
        if len(ids) >= limit:
            cut = "" if limit == self.config.max_length else f" (max_context; the model's: {self.config.max_length})"
            raise PromptError(
                f"the prompt is {len(ids)} tokens; this model reads at most {limit} tokens{cut}, "
                "prompt and generated together"
            )
        budget = min(max_new_tokens, limit - len(ids))
        sample = Sampler(temperature, top_k, top_p, seed)
        stream = TextStream(self.tokenizer, stop, on_text)
        generated: list[int] = []
        reason = "length"

        # Drafts are checked against greedy choices: sampling decodes a token a step. (Before the
        # prefill: the first call's probe uses the cache.)
        # Log-probabilities and grammars work on each one-token step's row: they decode a token a step too.
        draftable = sample.temperature == 0 and logprobs is None and constraint is None
        lookup = self.drafter(ids) if draftable and self.speculates(speculate) else None
        prefill_start = time.perf_counter()
        last, past = self._prefill(ids)
        scores: list[tuple[int, float, list[tuple[int, float]]]] | None = None if logprobs is None else []

        def choose(row: np.ndarray, remaining: int) -> int:
            if constraint is not None:  # what the grammar forbids is at -inf, in the logprobs too
                row = constraint.mask(row, remaining)
            chosen = sample(row)  # the sampler reads the row, it does not change it
            if scores is not None:
                scores.append((chosen, *token_logprobs(row, chosen, logprobs or 0)))
            return chosen

        pending = [choose(last, budget)]  # the tokens to emit: accepted drafts, then the one to feed next
        first = time.perf_counter()
        position = len(ids)
        step = np.empty((1, 1), dtype=np.int64)
        while True:
            token = pending.pop(0)
            generated.append(token)
            if lookup is not None:
                lookup.append(token)
            if constraint is not None:
                constraint.advance(token)
            if on_token is not None:
                on_token(token)
            if token in self.eos:
                reason = "eos"
                break
            if stream.add(token):
                reason = "stop"
                break
            if constraint is not None and constraint.stopped:  # complete, or the library gave up: cut
                reason = "grammar" if constraint.accepting else "length"
                break
            if len(generated) >= budget:
                break
            if pending:  # an accepted draft: already in the cache
                continue
            draft = lookup.draft(budget - len(generated) - 1) if lookup is not None else []
            if lookup is not None and draft:
                pending, past = self._verify([token, *draft], position, past, sample)
                lookup.update(len(draft), len(pending) - 1)
                position += len(pending)
                continue
            step[0, 0] = token
            if self.cache is not None:
                logits = self.cache.forward(step, position)
            else:
                logits, past = self._forward(step, position, past)
            position += 1
            pending = [choose(logits[0, -1], budget - len(generated))]
        decoded = time.perf_counter()
        text = stream.finish()
        prefill_s, decode_s = first - prefill_start, decoded - first
        steps = len(generated) - 1  # forward passes after the prefill
        return Generation(
            text=text,
            token_ids=generated,
            stop_reason=reason,
            logprobs=scores,
            timings={
                "prompt_tokens": len(ids),
                "new_tokens": len(generated),
                "time_to_first_token_ms": round(prefill_s * 1000, 3),
                "prefill_tokens_per_s": round(len(ids) / prefill_s, 2),
                "decode_tokens_per_s": round(steps / decode_s, 2) if steps > 0 else 0.0,
                "total_ms": round((time.perf_counter() - started) * 1000, 3),
                "speculative": lookup is not None,
                **(lookup.stats.to_json() if lookup is not None else {}),
            },
        )
