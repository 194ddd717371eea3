"""``python <bundle> prompt CONVERSATION.json [--tokens]``: the exact prompt the bundle renders.

The conversation is the JSON that ``/v1/chat/completions`` takes apart from sampling:
``{"messages": [...], "tools": [...], "chat_template_kwargs": {...}}`` (a bare list of messages
also does); ``-`` reads it from stdin. ``generate --chat FILE`` answers the same file.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

from .cli_input import InputError, UsageError, _require_task
from .integrity import RUNTIME_CONFIG
from .tasks import Task


def add_parser(sub: Any) -> None:
    p = sub.add_parser("prompt", help="print the prompt the chat template renders for a conversation file")
    p.add_argument("conversation", metavar="CONVERSATION.json", help='{"messages": [...], "tools": [...]}; "-": stdin')
    p.add_argument("--tokens", action="store_true", help="print its token ids (one JSON list) instead")


def read_conversation(name: str) -> Any:
    """The checked conversation in file ``name`` ('-': stdin); InputError naming what is wrong."""
    from .assistant.conversation import ConversationError, from_document, load

    try:
        if name != "-":
            return load(Path(name))
        try:
            document = json.loads(sys.stdin.buffer.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"stdin is not a JSON conversation: {exc}") from None
        return from_document(document, "stdin")
    except ConversationError as exc:
        raise InputError(str(exc)) from None


def conversation_ids(generator: Any, name: str) -> list[int]:
    """The ids ``generate --chat FILE`` continues: the file's conversation in the model's template."""
    conversation = read_conversation(name)
    ids: list[int] = generator.encode_messages(conversation.messages, conversation.tools, conversation.template_kwargs)
    return ids


def prompt(root: Path, args: Any) -> int:
    """Render without loading the model: the template, the special tokens and the tokenizer suffice."""
    from tokenizers import Tokenizer

    from .assistant.template import ChatTemplate, TemplateError
    from .generator import GenerationConfig

    _require_task(root, Task.GENERATION, "prompt")
    conversation = read_conversation(args.conversation)
    config = GenerationConfig.load(root / RUNTIME_CONFIG)
    if config.chat_template is None:
        raise UsageError(f"chat is off for this bundle: {config.chat_off or 'this model has no chat template'}")
    try:
        text = ChatTemplate(config.chat_template, config.special_tokens).render(
            conversation.messages, tools=conversation.tools, **conversation.template_kwargs
        )
    except TemplateError as exc:
        raise InputError(str(exc)) from None
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper):  # a template writes any character, whatever the locale
        out.reconfigure(encoding="utf-8")
    if args.tokens:
        tokenizer = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json"))
        out.write(json.dumps(tokenizer.encode(text, add_special_tokens=False).ids) + "\n")
    else:
        out.write(text)
    return 0
