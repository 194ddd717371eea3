"""A conversation as the chat template takes it: checked messages, tools and template options.

The same checks serve ``/v1/chat/completions`` and the CLI's ``prompt`` and ``generate --chat
FILE``, so a conversation renders the same everywhere. A field this runtime does not know is
refused by name rather than dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# OpenAI's "developer" role is the system prompt of newer models; templates know "system".
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content"})
FILE_FIELDS = frozenset({"messages", "tools", "chat_template_kwargs"})
MAX_MESSAGES = 1024


class ConversationError(ValueError):
    """A conversation that cannot be rendered; ``param`` names the field at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)


def _text(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise ConversationError(param, f"{param} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise ConversationError(param, f"{param} contains a NUL character")
    return value


def _content(value: object, param: str, role: str) -> str | None:
    """A message's text; text parts of a list are joined; None only where a template takes none."""
    if value is None and role == "assistant":
        return None  # an assistant turn of tool calls only
    if isinstance(value, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in value):
            raise ConversationError(param, f"{param}: only text content parts are supported")
        return "".join(_text(p.get("text"), f"{param}.text") for p in value)
    return _text(value, param)


def _tool_calls(value: object, param: str) -> list[dict[str, Any]]:
    """OpenAI's tool calls, their JSON ``arguments`` parsed: templates write them as objects."""
    if not isinstance(value, list):
        raise ConversationError(param, f"{param} must be a list")
    calls = []
    for number, call in enumerate(value):
        where = f"{param}[{number}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ConversationError(
                where, f'{where} must be {{"type": "function", "function": {{"name", "arguments"}}}}'
            )
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise ConversationError(where, f"{where}.function.arguments is not JSON") from None
        calls.append({**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}})
    return calls


def messages_from(value: object) -> list[dict[str, Any]]:
    """The messages of a request or file, checked; roles folded as ROLES says."""
    if not isinstance(value, list) or not value:
        raise ConversationError("messages", '"messages" must be a non-empty list')
    if len(value) > MAX_MESSAGES:
        raise ConversationError("messages", f"{len(value)} messages; at most {MAX_MESSAGES}")
    messages = []
    for number, message in enumerate(value):
        param = f"messages[{number}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ConversationError(param, f"{param} must be an object with a role of {', '.join(ROLES)}")
        unknown = sorted(message.keys() - MESSAGE_FIELDS)
        if unknown:
            raise ConversationError(f"{param}.{unknown[0]}", f"{param}: unknown field {unknown[0]!r}")
        role = ROLES[message["role"]]
        checked: dict[str, Any] = {"role": role, "content": _content(message.get("content"), f"{param}.content", role)}
        for name in ("name", "tool_call_id", "reasoning_content"):
            if message.get(name) is not None:
                checked[name] = _text(message[name], f"{param}.{name}")
        if message.get("tool_calls") is not None:
            if role != "assistant":
                raise ConversationError(f"{param}.tool_calls", f"{param}: only assistant messages carry tool_calls")
            checked["tool_calls"] = _tool_calls(message["tool_calls"], f"{param}.tool_calls")
        if checked["content"] is None and "tool_calls" not in checked:
            raise ConversationError(f"{param}.content", f"{param}.content must be a string")
        messages.append(checked)
    return messages


def tools_from(value: object) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConversationError("tools", '"tools" must be a list of objects')
    return value or None


def template_kwargs_from(value: object) -> dict[str, Any]:
    """``chat_template_kwargs``: variables the template reads (``enable_thinking``, ...)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConversationError("chat_template_kwargs", '"chat_template_kwargs" must be an object')
    for reserved in ("messages", "tools", "add_generation_prompt"):
        if reserved in value:
            raise ConversationError("chat_template_kwargs", f'"chat_template_kwargs" may not set {reserved!r}')
    return dict(value)


def from_document(document: object, where: str = "the conversation") -> Conversation:
    """``{"messages": [...], "tools": [...], "chat_template_kwargs": {...}}``, checked."""
    if isinstance(document, list):
        document = {"messages": document}
    if not isinstance(document, dict):
        raise ConversationError("body", f'{where} must be a JSON object with "messages": [...]')
    unknown = sorted(document.keys() - FILE_FIELDS)
    if unknown:
        raise ConversationError(
            unknown[0], f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(FILE_FIELDS))}"
        )
    return Conversation(
        messages_from(document.get("messages")),
        tools_from(document.get("tools")),
        template_kwargs_from(document.get("chat_template_kwargs")),
    )


def load(path: Path) -> Conversation:
    """A conversation file (JSON; a bare list of messages also does)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversationError("file", f"{path}: not a readable JSON conversation: {exc}") from None
    return from_document(document, str(path))
