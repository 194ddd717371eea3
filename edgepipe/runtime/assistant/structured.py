"""What a chat request asks of its answer's form: ``response_format`` and tools, and the answer cut to match.

``plan()`` checks the request's ``response_format``, ``tools``, ``tool_choice`` and ``parallel_tool_calls``
against what the bundle's template and tokenizer can do, and says what the answer is decoded under (a
grammar, or none) and how it is read back (text, or text and tool calls). ``ChatAnswer`` then turns the
generated tokens into OpenAI's message, or into its streamed deltas.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .grammar import Constraint, GrammarError, Vocabulary, lark_grammar, schema_grammar
from .tool_stream import ToolStream, decode_keeping, marker_ids
from .tools import ToolCall, ToolRequest, ToolSyntax, syntax_for, tool_request

FINISH_REASONS = {"eos": "stop", "stop": "stop", "grammar": "stop", "length": "length"}
KNOWN_SYNTAXES = "Hermes/Qwen <tool_call>, Llama 3.x JSON, Mistral [TOOL_CALLS], DeepSeek's tool tokens, gpt-oss"


def vocabulary_of(generator: Any) -> Vocabulary:
    """The generator's tokenizer as the grammar library sees it (built once per process, ~1 s)."""
    return Vocabulary.of(generator.tokenizer_path, generator.config.eos_token_ids[0])


def warm(generator: Any) -> None:
    """Build the grammar vocabulary ahead of the first request that needs one (a thread at serve start)."""
    with contextlib.suppress(Exception):  # without llguidance or with an odd tokenizer a request says why
        vocabulary_of(generator)


def response_grammar(body: dict[str, Any]) -> str | None:
    """The grammar ``response_format`` asks for; None for text."""
    spec = body.get("response_format")
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise GrammarError(
            '"response_format" must be {"type": "text"}, {"type": "json_object"} or '
            '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
            "response_format",
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return schema_grammar({"type": "object"}, "response_format")
    described = spec.get("json_schema")
    if not isinstance(described, dict) or not isinstance(described.get("name", ""), str):
        raise GrammarError(
            '"response_format.json_schema" must be {"name": ..., "schema": {...}}', "response_format.json_schema"
        )
    return schema_grammar(described.get("schema", {"type": "object"}), "response_format.json_schema.schema")


@dataclass(frozen=True)
class Plan:
    """How one chat answer is decoded and read back."""

    grammar: str | None = None  # the answer is decoded under it (a schema, or a forced tool call)
    tools: ToolRequest | None = None  # rendered into the prompt (None: no tools, or tool_choice "none")
    syntax: ToolSyntax | None = None  # the answer is read for tool calls in it

    def constraint(self, vocabulary: Vocabulary) -> Constraint | None:
        """A fresh grammar state for one generation."""
        return (
            None
            if self.grammar is None
            else Constraint(vocabulary, self.grammar, "tools" if self.tools else "response_format")
        )

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools as the chat template renders them; None when the prompt carries none."""
        return list(self.tools.definitions) if self.tools else None


def plan(body: dict[str, Any], template: str | None, vocabulary: Callable[[], Vocabulary]) -> Plan:
    """The checked form of a chat request's answer; GrammarError (a 400) naming the field it cannot honour.

    ``template`` is the chat template's source (the tool syntax is picked from it); ``vocabulary`` gives
    the bundle tokenizer as the grammar library sees it (a forced call's grammar names special tokens)."""
    grammar = response_grammar(body)
    tools = tool_request(body)
    if tools is None or tools.choice == "none":  # "none": the model is not told of the tools at all
        return Plan(grammar)
    syntax = syntax_for(template)
    if syntax is None:
        raise GrammarError(
            f'"tools": this model\'s chat template writes no tool-call syntax this server reads ({KNOWN_SYNTAXES}); '
            "call it without tools",
            "tools",
        )
    if grammar is not None:
        raise GrammarError('"response_format" with "tools" is not supported: send one or the other', "response_format")
    if not tools.forced:
        return Plan(None, tools, syntax)
    vocab = vocabulary()
    lark = syntax.lark(tools.offered(), tools.parallel, lambda marker: lark_token(vocab, marker))
    return Plan(lark_grammar(lark, "tools"), tools, syntax)


def lark_token(vocabulary: Vocabulary, marker: str) -> str:
    """``marker`` in a Lark grammar: its special token's id where the vocabulary has one, else its text."""
    ids = vocabulary.tokenizer.tokenize_str(marker, parse_special=True)
    if len(ids) == 1 and vocabulary.tokenizer.is_special_token(ids[0]):
        return f"<[{ids[0]}]>"
    return json.dumps(marker)


class ChatAnswer:
    """Turns one generation's tokens into OpenAI's assistant message, or its streamed deltas."""

    def __init__(self, plan: Plan, tokenizer: Any, eos: frozenset[int]) -> None:
        self.plan, self.tokenizer, self.eos = plan, tokenizer, eos
        self.stream: ToolStream | None = None
        if plan.syntax is not None and plan.tools is not None:
            self.stream = ToolStream(tokenizer, plan.syntax, frozenset(t.name for t in plan.tools.tools))

    @property
    def reads_tools(self) -> bool:
        """True when the answer is read for tool calls (the deltas then come from tokens, not text)."""
        return self.stream is not None

    def deltas(self, token: int) -> list[dict[str, Any]]:
        """The streamed deltas ``token`` completes (with tools only)."""
        if self.stream is None or token in self.eos:
            return []
        text, calls = self.stream.add(token)
        return self._deltas(text, calls, len(self.stream.sent) - len(calls))

    def finish(self, result: Any) -> tuple[list[dict[str, Any]], str]:
        """The last deltas of a stream and its finish_reason."""
        if self.stream is None:
            return [], FINISH_REASONS[result.stop_reason]
        before = len(self.stream.sent)
        text, calls, _, every = self.stream.finish()
        return self._deltas(text, calls, before), self._reason(result, every)

    def message(self, result: Any) -> tuple[dict[str, Any], str]:
        """The whole answer's message and finish_reason."""
        if self.plan.syntax is None or self.plan.tools is None:
            return {"role": "assistant", "content": result.text}, FINISH_REASONS[result.stop_reason]
        keep = marker_ids(self.tokenizer, self.plan.syntax)
        ids = [t for t in result.token_ids if t not in self.eos]
        content, calls = self.plan.syntax.split(decode_keeping(self.tokenizer, ids, keep))
        names = {t.name for t in self.plan.tools.tools}
        calls = [c for c in calls if c.name in names]
        if not calls:  # half-formed call text, or none: the answer is text
            return {"role": "assistant", "content": result.text}, FINISH_REASONS[result.stop_reason]
        message = {"role": "assistant", "content": content or None, "tool_calls": [c.to_json() for c in calls]}
        return message, "tool_calls"

    @staticmethod
    def _reason(result: Any, calls: list[ToolCall]) -> str:
        return "tool_calls" if calls else FINISH_REASONS[result.stop_reason]

    @staticmethod
    def _deltas(text: str, calls: list[ToolCall], first: int) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = [{"content": text}] if text else []
        for index, call in enumerate(calls, first):
            head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            deltas.append({"tool_calls": [head]})
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]})
        return deltas
