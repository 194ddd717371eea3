"""Tool calls: the request's ``tools`` checked, the model's tool-call text found and parsed, per family.

A family's syntax is picked from its chat template's source, as llama.cpp's ``common/chat.cpp`` does: the
template that renders ``<tool_call>`` is answered in that syntax. What the model writes is cut into the
answer's text and its calls (``message.tool_calls``); half-formed call text stays text. A forced call
(``tool_choice`` ``required`` or a named function) is decoded under the grammar of the family's syntax
with the tools' parameter schemas inside, so its arguments always validate.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .grammar import GrammarError, check_document, closed

# More tools than this is no assistant's request; their schemas would not fit a context anyway.
MAX_TOOLS = 128
NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text (OpenAI's "arguments")
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def to_json(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return call if index is None else {"index": index, **call}


@dataclass(frozen=True)
class ToolRequest:
    """A checked ``tools`` / ``tool_choice`` / ``parallel_tool_calls``."""

    tools: tuple[Tool, ...]
    choice: str  # "auto" | "none" | "required" | "function" (then ``name``)
    name: str | None = None
    parallel: bool = True
    definitions: tuple[dict[str, Any], ...] = ()  # the tools as the chat template receives them

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "function")

    def offered(self) -> tuple[Tool, ...]:
        """The tools a forced call may call."""
        return tuple(t for t in self.tools if self.name in (None, t.name))


def _bad(param: str, message: str) -> GrammarError:
    return GrammarError(message, param)


def tool_request(body: dict[str, Any]) -> ToolRequest | None:
    """The request's tools, or None when it has none; GrammarError (a 400) naming what is wrong."""
    raw, choice = body.get("tools"), body.get("tool_choice")
    if raw is None or raw == []:
        if choice not in (None, "none", "auto"):
            raise _bad("tool_choice", '"tool_choice" needs "tools"')
        return None
    if not isinstance(raw, list):
        raise _bad("tools", '"tools" must be a list of {"type": "function", "function": {...}}')
    if len(raw) > MAX_TOOLS:
        raise _bad("tools", f"{len(raw)} tools in one request; this server takes at most {MAX_TOOLS}")
    tools, names, definitions = [], set(), []
    for number, tool in enumerate(raw):
        param = f"tools[{number}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise _bad(param, f'{param} must be {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}')
        name = function.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise _bad(f"{param}.function.name", f"{param}.function.name must be 1-64 letters, digits, '_', '.', '-'")
        if name in names:
            raise _bad(f"{param}.function.name", f"{param}.function.name {name!r} is given twice")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise _bad(f"{param}.function.description", f"{param}.function.description must be a string")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        parameters = check_document(parameters, f"{param}.function.parameters")
        names.add(name)
        tools.append(Tool(name, parameters))
        definitions.append({"type": "function", "function": {k: v for k, v in function.items() if k != "strict"}})
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise _bad("parallel_tool_calls", '"parallel_tool_calls" must be true or false')
    name = None
    if choice is None:
        choice = "auto"
    elif isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise _bad("tool_choice", '"tool_choice" must be "auto", "none", "required" or '
                       '{"type": "function", "function": {"name": ...}}')  # fmt: skip
        if name not in names:
            raise _bad("tool_choice", f'"tool_choice" names {name!r}, which is not among "tools"')
        choice = "function"
    elif choice not in ("auto", "none", "required"):
        raise _bad("tool_choice", '"tool_choice" must be "auto", "none", "required" or a named function')
    return ToolRequest(tuple(tools), choice, name, parallel, tuple(definitions))


def arguments_object(text: object, param: str) -> dict[str, Any]:
    """An assistant message's ``function.arguments`` (a JSON object as text) as the object templates render."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise _bad(param, f"{param} must be a JSON object as a string")
    return value


# --- the families' syntaxes -------------------------------------------------------------------------------


def _json_at(text: str, start: int) -> tuple[Any, int] | None:
    """The JSON value at ``text[start:]`` (after blanks) and where it ends; None when it is not (yet) whole."""
    while start < len(text) and text[start] in " \t\r\n":
        start += 1
    try:
        return json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return None


def _call(name: object, arguments: object) -> ToolCall | None:
    if not isinstance(name, str) or not isinstance(arguments, dict | str):
        return None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
        if not isinstance(arguments, dict):
            return None
    return ToolCall(name, json.dumps(arguments, ensure_ascii=False))


Parsed = tuple[list[ToolCall], int]  # the calls and how far into the text they reach; None: not (yet) whole


def _hermes(text: str) -> Parsed | None:
    calls: list[ToolCall] = []
    at = 0
    while True:
        start = text.find("<tool_call>", at)
        if start < 0 or text[at:start].strip():
            return (calls, at) if calls else None
        found = _json_at(text, start + len("<tool_call>"))
        if found is None:
            return None
        value, end = found
        close = text.find("</tool_call>", end)
        if close < 0 or text[end:close].strip() or not isinstance(value, dict):
            return None
        call = _call(value.get("name"), value.get("arguments", {}))
        if call is None:
            return None
        calls.append(call)
        at = close + len("</tool_call>")
        if not text[at:].strip():
            return calls, len(text)


def _llama3(text: str) -> Parsed | None:
    body = text.removeprefix("<|python_tag|>")
    offset = len(text) - len(body)
    found = _json_at(body, 0)
    if found is None or not isinstance(found[0], dict):
        return None
    value, end = found
    call = _call(value.get("name"), value.get("parameters", value.get("arguments", {})))
    return ([call], offset + end) if call is not None and not body[end:].strip(" ;\n") else None


def _mistral(text: str) -> Parsed | None:
    found = _json_at(text, len("[TOOL_CALLS]")) if text.startswith("[TOOL_CALLS]") else None
    if found is None or not isinstance(found[0], list) or not found[0]:
        return None
    calls = [_call(c.get("name"), c.get("arguments", {})) if isinstance(c, dict) else None for c in found[0]]
    if any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None], found[1]


DEEPSEEK_CALL = re.compile(
    r"<｜tool▁call▁begin｜>function<｜tool▁sep｜>([^\n]+)\n```json\n(.*?)\n```<｜tool▁call▁end｜>", re.S
)


def _deepseek(text: str) -> Parsed | None:
    begin, end = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
    if not text.startswith(begin):
        return None
    calls, at = [], len(begin)
    while (match := DEEPSEEK_CALL.match(text, at)) is not None:
        call = _call(match.group(1).strip(), match.group(2))
        if call is None:
            return None
        calls.append(call)
        at = match.end()
    if not calls or not text.startswith(end, at):
        return None
    return calls, at + len(end)


GPT_OSS_CALL = re.compile(
    r"(?:<\|start\|>assistant)?<\|channel\|>commentary to=functions\.([\w.\-]+)\s*(?:<\|constrain\|>\w+)?"
    r"<\|message\|>(.*?)(?:<\|call\|>|$)",
    re.S,
)


def _gpt_oss(text: str) -> Parsed | None:
    match = GPT_OSS_CALL.match(text)
    if match is None:
        return None
    call = _call(match.group(1), match.group(2))
    return ([call], match.end()) if call is not None else None


@dataclass(frozen=True)
class ToolSyntax:
    """How one family writes tool calls: the text a call starts with, its parser, its forced grammar."""

    name: str
    markers: tuple[str, ...]  # a call starts with one of these ("" for Llama's bare JSON)
    parse_calls: Callable[[str], Parsed | None]
    lark: Callable[[Sequence[Tool], bool, Callable[[str], str]], str]

    def split(self, text: str) -> tuple[str, list[ToolCall]]:
        """The answer's text and its tool calls; call text that is not whole stays text."""
        start = self.start(text)
        if start is None:
            return text, []
        parsed = self.parse_calls(text[start:].lstrip() if self.name != "llama3" else text[start:].strip())
        if parsed is None:
            return text, []
        return text[:start].rstrip(), parsed[0]

    def start(self, text: str) -> int | None:
        """Where the first call starts in ``text``; None when no call does."""
        if self.name == "llama3":  # a bare JSON object as the whole answer, or after the python tag
            at = text.find("<|python_tag|>")
            if at >= 0:
                return at
            stripped = text.lstrip()
            return len(text) - len(stripped) if stripped.startswith("{") else None
        hits = [i for i in (text.find(m) for m in self.markers) if i >= 0]
        return min(hits) if hits else None

    def held(self, text: str) -> int:
        """How much of the end of ``text`` could be the start of a call (not to be streamed as text yet)."""
        if self.name == "llama3" and (not text.strip() or text.lstrip().startswith("{")):
            return len(text)
        for size in range(min(len(text), max(len(m) for m in self.markers)), 0, -1):
            if any(m.startswith(text[-size:]) for m in self.markers if m):
                return size
        return 0


def _arguments_schema(tool: Tool) -> dict[str, Any]:
    return closed(tool.parameters)


def _rebased(schema: Any, base: str) -> Any:
    """``schema`` with its local ``$ref``s ("#", "#/$defs/x") pointing below ``base`` instead of the root."""
    if isinstance(schema, list):
        return [_rebased(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: value if key in ("enum", "const", "default", "examples") else _rebased(value, base)
              for key, value in schema.items()}  # fmt: skip
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        result["$ref"] = base + ref[1:]
    return result


def _one_of(tools: Sequence[Tool], name_key: str, args_key: str, extra: dict[str, Any] | None = None) -> str:
    """One JSON schema for a call of any of ``tools``; each tool's parameters sit in ``$defs`` under its name,
    so that their own ``$ref``s (recursive ones too) still resolve inside the wrapper."""
    options, defs = [], {}
    for tool in tools:
        defs[tool.name] = _rebased(_arguments_schema(tool), f"#/$defs/{tool.name}")
        properties: dict[str, Any] = {name_key: {"const": tool.name}, args_key: {"$ref": f"#/$defs/{tool.name}"}}
        properties.update(extra or {})
        options.append({"type": "object", "properties": properties, "required": list(properties),
                        "additionalProperties": False})  # fmt: skip
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return _compact({**schema, "$defs": defs})


def _compact(schema: dict[str, Any]) -> str:
    """A ``%json`` schema whose JSON has one space after ':' and ',' and no other whitespace: without it a
    model (random weights do) can spend every token of a forced call on whitespace and never finish it."""
    return json.dumps(
        {**schema, "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
    )


def _hermes_lark(tools: Sequence[Tool], parallel: bool, token: Callable[[str], str]) -> str:
    more = '("\\n" call)*' if parallel else ""
    return (
        f"start: call {more}\n"
        f'call: {token("<tool_call>")} "\\n" body "\\n" {token("</tool_call>")}\n'
        f"body: %json {_one_of(tools, 'name', 'arguments')}\n"
    )


def _llama3_lark(tools: Sequence[Tool], parallel: bool, token: Callable[[str], str]) -> str:
    return f"start: %json {_one_of(tools, 'name', 'parameters')}\n"


def _mistral_lark(tools: Sequence[Tool], parallel: bool, token: Callable[[str], str]) -> str:
    item = json.loads(_one_of(tools, "name", "arguments", {"id": {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}}))
    defs = item.pop("$defs")  # at the root, where the items' references point
    item.pop("x-guidance")  # an option of the whole document, not of an item
    schema = {"type": "array", "items": item, "minItems": 1, **({} if parallel else {"maxItems": 1}), "$defs": defs}
    return f"start: {token('[TOOL_CALLS]')} calls\ncalls: %json {_compact(schema)}\n"


def _deepseek_lark(tools: Sequence[Tool], parallel: bool, token: Callable[[str], str]) -> str:
    rules = []
    for number, tool in enumerate(tools):
        rules.append(
            f'call{number}: {token("<｜tool▁call▁begin｜>")} "function" {token("<｜tool▁sep｜>")} '
            f'{json.dumps(tool.name)} "\\n```json\\n" args{number} "\\n```" {token("<｜tool▁call▁end｜>")}\n'
            f"args{number}: %json {_compact(_arguments_schema(tool))}\n"
        )
    calls = " | ".join(f"call{n}" for n in range(len(tools)))
    more = "+" if parallel else ""
    return f"start: {token('<｜tool▁calls▁begin｜>')} ({calls}){more} {token('<｜tool▁calls▁end｜>')}\n" + "".join(
        rules
    )


def _gpt_oss_lark(tools: Sequence[Tool], parallel: bool, token: Callable[[str], str]) -> str:
    rules = []
    for number, tool in enumerate(tools):
        rules.append(
            f'call{number}: {token("<|channel|>")} "commentary to=functions.{tool.name} " '
            f'{token("<|constrain|>")} "json" {token("<|message|>")} args{number} {token("<|call|>")}\n'
            f"args{number}: %json {_compact(_arguments_schema(tool))}\n"
        )
    return f"start: {' | '.join(f'call{n}' for n in range(len(tools)))}\n" + "".join(rules)


SYNTAXES = {
    "deepseek": ToolSyntax("deepseek", ("<｜tool▁calls▁begin｜>",), _deepseek, _deepseek_lark),
    "hermes": ToolSyntax("hermes", ("<tool_call>",), _hermes, _hermes_lark),
    "gpt-oss": ToolSyntax("gpt-oss", ("<|channel|>commentary to=",), _gpt_oss, _gpt_oss_lark),
    "llama3": ToolSyntax("llama3", ("<|python_tag|>",), _llama3, _llama3_lark),
    "mistral": ToolSyntax("mistral", ("[TOOL_CALLS]",), _mistral, _mistral_lark),
}
# The special tokens each syntax writes, kept when the answer is decoded for parsing.
MARKER_TOKENS = {
    "deepseek": ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
                 "<｜tool▁sep｜>"),
    "hermes": ("<tool_call>", "</tool_call>"),
    "gpt-oss": ("<|start|>", "<|channel|>", "<|constrain|>", "<|message|>", "<|call|>"),
    "llama3": ("<|python_tag|>",),
    "mistral": ("[TOOL_CALLS]",),
}  # fmt: skip


def syntax_for(template: str | None) -> ToolSyntax | None:
    """The tool-call syntax a chat template's source renders, in llama.cpp's order of checks; None: unknown."""
    if not template:
        return None
    if "<｜tool▁calls▁begin｜>" in template:
        return SYNTAXES["deepseek"]
    if "<tool_call>" in template:
        return SYNTAXES["hermes"]
    if "<|channel|>" in template and "to=functions" in template:
        return SYNTAXES["gpt-oss"]
    if "<|start_header_id|>ipython<|end_header_id|>" in template or "<|python_tag|>" in template:
        return SYNTAXES["llama3"]
    if "[TOOL_CALLS]" in template:
        return SYNTAXES["mistral"]
    return None
