"""A decoder's runtime config, read from the model at build time: the KV cache's shape, EOS ids,
context length and the chat template (rendered here with transformers so the bundle needs no Jinja)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..runtime.chat import ROLES, SYSTEM_FOLD, SYSTEM_NONE, SYSTEM_TURN, ChatTemplate
from ..runtime.generator import GenerationConfig
from ..stages.export import quiet

log = logging.getLogger(__name__)
# A user message that no template can mistake for anything else; the rendering is split at it.
# Letters only: templates that trim each message (Gemma's, Llama 3's) strip "\x1f" as whitespace.
SENTINEL = "EDGEPIPEUSERMESSAGE"
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable: {exc}") from None
    return data if isinstance(data, dict) else {}


def kv_shape(onnx_model: Path, config: dict[str, Any]) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) from the model's past_key_values inputs.

    The inputs' static dims say it for every architecture alike; config.json fills in a dim that
    the export left symbolic.
    """
    import onnx

    graph = onnx.load(str(onnx_model), load_external_data=False).graph
    layers: set[int] = set()
    dims: tuple[int, int] | None = None
    for value in graph.input:
        match = _PAST.match(value.name)
        if not match:
            continue
        layers.add(int(match.group(1)))
        shape = value.type.tensor_type.shape.dim
        if dims is None and len(shape) == 4:
            dims = (shape[1].dim_value, shape[3].dim_value)
    if not layers or dims is None:
        raise ModelError(f"{onnx_model}: no past_key_values inputs; export it with task text-generation-with-past")
    if sorted(layers) != list(range(len(layers))):
        raise ModelError(f"{onnx_model}: past_key_values layers are not 0..{len(layers) - 1}")
    heads, head_dim = dims
    if not heads:
        heads = int(config.get("num_key_value_heads") or config.get("num_attention_heads") or 0)
    if not head_dim:
        attention = config.get("num_attention_heads") or config.get("n_head") or 0
        hidden = config.get("hidden_size") or config.get("n_embd") or 0
        head_dim = int(config.get("head_dim") or (hidden // attention if attention else 0))
    if not heads or not head_dim:
        raise ModelError(f"{onnx_model}: cannot tell the KV cache's heads and head size")
    return len(layers), heads, head_dim


def _ids(value: object) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def eos_token_ids(model_dir: Path) -> tuple[int, ...]:
    """generation_config.json's EOS ids, then config.json's (each an int or a list), deduplicated."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        ids += _ids(_json(model_dir / name).get("eos_token_id"))
    return tuple(dict.fromkeys(ids))


# Models whose positions are an attention bias (ALiBi) have no table to overrun and no limit in
# config.json: the tokenizer's model_max_length, else the context they were trained at.
TRAINED_CONTEXT = {"bloom": 2048}


def _positive(value: object) -> int:
    """``value`` if it is a positive int, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# Families whose published config.json leaves the context out (tiiuae/falcon-7b): transformers'
# config class default is what the model runs with.
CONFIG_DEFAULT_CONTEXT = ("falcon",)


def _config_default(config: dict[str, Any]) -> int:
    """The context transformers' config class gives a CONFIG_DEFAULT_CONTEXT model, or 0."""
    from transformers import AutoConfig

    if config.get("model_type") not in CONFIG_DEFAULT_CONTEXT:
        return 0
    try:
        filled = AutoConfig.for_model(str(config.get("model_type")))
    except (ValueError, KeyError):
        return 0
    return _positive(getattr(filled, "max_position_embeddings", None))


def max_length(config: dict[str, Any], model_dir: Path) -> int:
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if _positive(config.get(key)):
            return _positive(config.get(key))
    if _config_default(config):
        return _config_default(config)
    trained = TRAINED_CONTEXT.get(str(config.get("model_type")))
    if trained:
        stated = _positive(_json(model_dir / "tokenizer_config.json").get("model_max_length"))
        return stated if 0 < stated < 1 << 20 else trained  # 1e30 in transformers: no limit
    raise ModelError(
        f"{model_dir / 'config.json'}: no max_position_embeddings or n_positions; "
        "cannot tell the model's context length"
    )


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    with quiet():
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def chat_template(model_dir: Path, tokenizer: Any = None) -> tuple[str, str] | None:
    """The chat template rendered around one user message, as (prefix, suffix); None without one.

    Rendered here with transformers so the bundle needs no Jinja. The prefix keeps whatever special
    tokens the template writes (a BOS included), so the runtime encodes prefix + prompt + suffix
    without adding special tokens, as apply_chat_template(tokenize=True) does.
    """
    tokenizer = tokenizer or _tokenizer(model_dir)
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        with quiet():
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": SENTINEL}], tokenize=False, add_generation_prompt=True
            )
    except Exception as exc:  # a template's own raise_exception() or a Jinja error
        log.warning("%s: chat template does not render one user message: %s", model_dir, exc)
        return None
    if not isinstance(rendered, str) or rendered.count(SENTINEL) != 1:
        log.warning("%s: chat template does not show the user message verbatim once", model_dir)
        return None
    prefix, suffix = rendered.split(SENTINEL)
    return prefix, suffix


class TemplateRefused(Exception):
    """A chat template the runtime cannot reproduce without Jinja; the message says why."""


# Marker contents, padded so that a template that strips whitespace shows it.
_PAD = " \n"
_MARKS = {role: f"@@EDGEPIPE-{role.upper()}-{{}}@@" for role in ROLES}
# Conversations the extracted template must render exactly as transformers does: contents with
# surrounding whitespace, newlines, markup-like text and non-ASCII, in every shape the runtime takes.
_CHECK_TEXTS = [" Hello there!\n", "Two\nlines,  spaces ", "<b>ünïcødé</b> {{ x }}", "ok", ""]


def _conversations(system: bool) -> list[list[dict[str, str]]]:
    t = _CHECK_TEXTS
    shapes = [["user"], ["user", "assistant", "user"], ["user", "assistant"] * 2 + ["user"]]
    if system:
        shapes += [["system", "user"], ["system", "user", "assistant", "user"]]
    return [
        [{"role": role, "content": t[(n + i) % len(t)]} for i, role in enumerate(shape)]
        for n, shape in enumerate(shapes * 2)
    ]


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    with quiet():
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    if not isinstance(rendered, str):
        raise TemplateRefused("apply_chat_template did not return text")
    return rendered


def _split(rendered: str, messages: list[tuple[str, str]]) -> tuple[list[str], set[str]]:
    """The text between the marker messages of ``rendered``, and the roles whose markers lost their
    padding (the template strips content)."""
    segments, trimmed, at = [], set(), 0
    for role, mark in messages:
        padded = _PAD + mark + _PAD
        found = rendered.find(padded, at)
        width = len(padded)
        if found < 0 or rendered.count(mark) != 1:
            found, width = rendered.find(mark, at), len(mark)
            if found < 0 or rendered.count(mark) != 1:
                raise TemplateRefused(f"the {role} message does not appear exactly once")
            trimmed.add(role)
        segments.append(rendered[at:found])
        at = found + width
    return segments + [rendered[at:]], trimmed


def _cut(text: str, start: str = "", end: str = "", what: str = "") -> str:
    if not text.startswith(start) or not text.endswith(end) or len(start) + len(end) > len(text):
        raise TemplateRefused(f"the text around {what} differs from one turn to the next")
    return text[len(start) : len(text) - len(end)]


def _extract(tokenizer: Any) -> ChatTemplate:
    """The per-role text of ``tokenizer``'s template; TemplateRefused where it is not that simple."""
    u = [("user", _PAD + _MARKS["user"].format(i) + _PAD) for i in range(2)]
    a = ("assistant", _PAD + _MARKS["assistant"].format(0) + _PAD)
    s = ("system", _PAD + _MARKS["system"].format(0) + _PAD)

    def split(messages: list[tuple[str, str]], generation_prompt: bool) -> list[str]:
        conversation = [{"role": r, "content": c} for r, c in messages]
        marks = [(r, c.strip()) for r, c in messages]
        segments, cut = _split(_render(tokenizer, conversation, generation_prompt), marks)
        trimmed.update(cut)
        return segments

    trimmed: set[str] = set()
    first_user, user_end = split([u[0]], False)
    generation_prompt = _cut(split([u[0]], True)[1], user_end, what="the generation prompt")
    head_user, user_assistant, assistant_end = split([u[0], a], False)
    if head_user != first_user:
        raise TemplateRefused("the first user turn reads differently before an assistant turn")
    assistant_prefix = _cut(user_assistant, user_end, what="the assistant turn")
    user_prefix = _cut(split([u[0], a, u[1]], False)[2], assistant_end, what="the user turn")
    head = _cut(first_user, end=user_prefix, what="the first message")
    template = ChatTemplate(
        head=head,
        user=(user_prefix, user_end),
        assistant=(assistant_prefix, assistant_end),
        generation_prompt=generation_prompt,
    )
    try:
        opening, between, end = split([s, u[0]], True)
    except Exception:  # noqa: BLE001 - the template raises on a system message, or drops it
        return replace(template, trim=tuple(sorted(trimmed)))
    if end != user_end + generation_prompt:
        raise TemplateRefused("the user turn after a system message reads differently")
    if opening.startswith(head + user_prefix):  # folded into the first user message
        system = (opening[len(head + user_prefix) :], between)
        mode = SYSTEM_FOLD
    else:
        system = (opening, _cut(between, end=user_prefix, what="the system turn"))
        mode = SYSTEM_TURN
    return replace(template, system_mode=mode, system=system, trim=tuple(sorted(trimmed)))


def multi_turn_template(model_dir: Path, tokenizer: Any = None) -> tuple[ChatTemplate | None, str]:
    """The template the runtime renders conversations with, or None and the one-line reason."""
    tokenizer = tokenizer or _tokenizer(model_dir)
    if not getattr(tokenizer, "chat_template", None):
        return None, "the model has no chat template"
    try:
        template = _extract(tokenizer)
        for number, conversation in enumerate(_conversations(template.system_mode != SYSTEM_NONE), start=1):
            expected = _render(tokenizer, conversation, True)
            got = template.render([(m["role"], m["content"]) for m in conversation])
            if got != expected:
                at = len(os.path.commonprefix([got, expected]))
                raise TemplateRefused(
                    f"check conversation {number} renders differently at character {at} "
                    f"({expected[at : at + 20]!r} expected, {got[at : at + 20]!r} without Jinja)"
                )
    except TemplateRefused as exc:
        return None, f"chat template not reproducible without Jinja: {exc}"
    except Exception as exc:  # a Jinja error or the template's own raise_exception()
        message = " ".join(str(exc).split())[:200]
        return None, f"chat template does not render a multi-turn conversation: {message}"
    return template, ""


def runtime_config(
    model_dir: Path,
    onnx_model: Path,
    threads: int,
    inter_op: int,
    providers: Sequence[str],
    ram_mb: float | None = None,
) -> GenerationConfig:
    """The bundle's runtime.json for a decoder exported to ``onnx_model`` from ``model_dir``;
    ``ram_mb``, the target's memory budget, caps the default context by its KV cache."""
    config = _json(model_dir / "config.json")
    layers, heads, head_dim = kv_shape(onnx_model, config)
    tokenizer = _tokenizer(model_dir)
    chat = chat_template(model_dir, tokenizer)
    conversation, reason = multi_turn_template(model_dir, tokenizer) if chat else (None, "")
    if chat and conversation is None:
        log.warning("%s: /v1/chat/completions is off: %s", model_dir, reason)
    return GenerationConfig(
        num_layers=layers,
        num_kv_heads=heads,
        head_dim=head_dim,
        eos_token_ids=eos_token_ids(model_dir),
        max_length=max_length(config, model_dir),
        chat_prefix=chat[0] if chat else None,
        chat_suffix=chat[1] if chat else None,
        chat_template=conversation,
        chat_off=reason or (None if chat else "the model has no chat template"),
        intra_op_threads=threads,
        inter_op_threads=inter_op,
        providers=tuple(providers),
        ram_mb=ram_mb,
    )
