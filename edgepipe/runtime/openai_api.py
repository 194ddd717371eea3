"""The OpenAI-compatible endpoints of ``serve``: request checks and response documents.

Only what a bundle can honour is accepted (``openai_fields`` says which fields and values); a
field that asks for more, or one this API does not know, is a 400 naming it. The endpoints
(``endpoints/``) send what these functions return.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from . import openai_fields
from .http.json_body import RequestError

if TYPE_CHECKING:  # numpy is imported where embeddings are: `verify` runs without it
    import numpy as np

    from .assistant.structured import ChatAnswer

# The statuses OpenAI's own API answers with these error codes.
ERROR_CODES = {
    HTTPStatus.UNAUTHORIZED: "invalid_api_key",
    HTTPStatus.NOT_FOUND: "not_found",
    HTTPStatus.METHOD_NOT_ALLOWED: "method_not_allowed",
    HTTPStatus.REQUEST_TIMEOUT: "request_timeout",
    HTTPStatus.LENGTH_REQUIRED: "length_required",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "request_too_large",
    HTTPStatus.SERVICE_UNAVAILABLE: "overloaded",
}
FINISH_REASONS = {"eos": "stop", "stop": "stop", "grammar": "stop", "length": "length"}


def error_document(status: HTTPStatus, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    code = ERROR_CODES.get(status)
    if code is None and status == HTTPStatus.BAD_REQUEST and "tokens" in message:
        code = "context_length_exceeded" if "reads at most" in message else None
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _bad(param: str, message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message, param=param)


def _body(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise _bad("body", "body must be a JSON object")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", '"model" must be a string')
    return payload


def _text(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise _bad(param, f'"{param}" must be a string, not {type(value).__name__}')
    if "\x00" in value:
        raise _bad(param, f'"{param}" contains a NUL character')
    return value


def _number(payload: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = payload.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, kind if kind is int else (int, float)):
        raise _bad(name, f'"{name}" must be {"an integer" if kind is int else "a number"}')
    return value


def model_document(manifest: dict[str, Any], created: int) -> dict[str, Any]:
    """The bundle as one model: its name, with the target and profile it was built for."""
    target, profile = manifest.get("target") or {}, manifest.get("profile") or {}
    return {
        "id": manifest.get("name") or "bundle",
        "object": "model",
        "created": created,
        "owned_by": "edgepipe",
        "task": manifest.get("task"),
        "target": target.get("name") if isinstance(target, dict) else target,
        "profile": profile.get("name") if isinstance(profile, dict) else profile,
    }


def embedding_inputs(payload: object, max_texts: int) -> tuple[list[str], str]:
    """The texts and encoding format of a /v1/embeddings body."""
    body = _body(payload)
    openai_fields.check_known(body, openai_fields.EMBEDDING_FIELDS, "/v1/embeddings")
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts:
        raise _bad("input", '"input" must be a string or a non-empty list of strings')
    if len(texts) > max_texts:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"{len(texts)} inputs in one request; at most {max_texts}",
            param="input",
        )
    texts = [_text(t, "input") for t in texts]
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _bad("encoding_format", '"encoding_format" must be "float" or "base64"')
    if body.get("dimensions") is not None:
        raise _bad("dimensions", '"dimensions" is not supported: the model has one size')
    return texts, encoding


def embeddings_document(vectors: np.ndarray, encoding: str, prompt_tokens: int, model: str) -> dict[str, Any]:
    import numpy as np

    data = []
    for index, vector in enumerate(vectors):
        if encoding == "base64":  # little-endian float32, as OpenAI's clients decode it
            value: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        else:  # rounded as `python <bundle> embed` prints it
            value = [round(float(x), 7) for x in vector]
        data.append({"object": "embedding", "index": index, "embedding": value})
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


@dataclass
class Completion:
    """A checked /v1/chat/completions or /v1/completions request."""

    chat: bool
    prompt: str | list[int]  # text for /v1/completions, the template's ids for chat
    options: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    model: str = ""
    answer: ChatAnswer | None = None  # chat: its form (response_format, tools) and how it is read back
    # The rendered chat prompt, when the model thinks between <think> tags: the reply's thinking
    # goes to reasoning_content, the answer to content (assistant/reasoning.py).
    thinking_prompt: str | None = None
    n: int = 1
    decode: Any = None  # token id -> its text, for logprobs
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))
    splitter: Any = None  # the streamed reply's ReasoningSplitter

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    def _head(self, suffix: str = "") -> dict[str, Any]:
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        return {
            "id": prefix + self.id,
            "object": self.object + suffix,
            "created": self.created,
            "model": self.model,
        }

    def response(self, results: Any) -> dict[str, Any]:
        """The whole answer to a request without ``stream``: one choice per generation."""
        results = results if isinstance(results, list) else [results]
        choices = [self._choice(index, result) for index, result in enumerate(results)]
        total = {k: sum(usage(r)[k] for r in results) for k in ("completion_tokens",)}
        counted = {**usage(results[0]), **total}
        counted["total_tokens"] = counted["prompt_tokens"] + counted["completion_tokens"]
        return {**self._head(), "choices": choices, "usage": counted}

    def _choice(self, index: int, result: Any) -> dict[str, Any]:
        reason = FINISH_REASONS[result.stop_reason]
        choice: dict[str, Any] = {"index": index, "finish_reason": reason, "logprobs": None}
        if result.logprobs is not None and self.decode is not None:
            choice["logprobs"] = openai_fields.logprobs_document(self.chat, result.logprobs, self.decode)
        if self.chat:
            choice["message"] = {"role": "assistant", "content": result.text}
            if self.thinking_prompt is not None:
                from .assistant.reasoning import split

                reasoning, content = split(self.thinking_prompt, result.text)
                choice["message"]["content"] = content
                if reasoning is not None:
                    choice["message"]["reasoning_content"] = reasoning
            if self.answer is not None and self.answer.reads_tools:  # its text read for tool calls
                choice["message"], choice["finish_reason"] = self.answer.message(result)
        else:
            choice["text"] = result.text
        return choice

    def deltas(self, text: str | None) -> list[tuple[str, str]]:
        """A streamed piece of the reply as (field, text): "content" or "reasoning_content";
        ``None`` ends the reply (what a tag's start held back comes out)."""
        if self.thinking_prompt is None:
            return [("content", text)] if text else []
        from .assistant.reasoning import REASONING, ReasoningSplitter

        if self.splitter is None:
            self.splitter = ReasoningSplitter(self.thinking_prompt)
        pieces = self.splitter.finish() if text is None else self.splitter.feed(text)
        return [("reasoning_content" if kind == REASONING else "content", piece) for kind, piece in pieces]

    def chunk(
        self, text: str | None, finish: str | None = None, first: bool = False, kind: str = "content"
    ) -> dict[str, Any]:
        """One server-sent event of a streamed answer."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta[kind] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        return {**self._head(".chunk" if self.chat else ""), "choices": [choice]}

    def delta_chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        """One server-sent event of a chat answer read for tool calls: a content or tool-call delta."""
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**self._head(".chunk"), "choices": [choice]}

    def usage_chunk(self, result: Any) -> dict[str, Any]:
        return {**self._head(".chunk" if self.chat else ""), "choices": [], "usage": usage(result)}


def usage(result: Any) -> dict[str, int]:
    prompt, completion = result.timings["prompt_tokens"], len(result.token_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _options(body: dict[str, Any], default_tokens: int) -> dict[str, Any]:
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    tokens = _number({name: tokens}, name, int, default_tokens)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is None:
        stop = []
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", '"stop" must be a string or a list of at most 4 strings')
    options = {
        "max_new_tokens": tokens,
        "temperature": _number(body, "temperature", float, 1.0),
        "top_p": _number(body, "top_p", float, 1.0),
        "top_k": _number(body, "top_k", int, 0),
        "seed": _number(body, "seed", int, None),
        "stop": [s for s in stop if s],
    }
    from .generator import OptionError, check_options

    try:
        check_options(**options)
    except OptionError as exc:
        message = str(exc)
        param = next(
            (p for p in ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop") if message.startswith(p)),
            "body",
        )
        raise _bad(name if param == "max_new_tokens" else param, message.replace("max_new_tokens", name)) from None
    return options


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _bad("stream", '"stream" must be true or false')
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise _bad("stream_options", '"stream_options" must be {"include_usage": true|false}')
    return stream, bool(options.get("include_usage"))


def messages_from(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's messages, checked as a conversation file's are."""
    from .assistant.conversation import ConversationError
    from .assistant.conversation import messages_from as checked

    try:
        return checked(payload.get("messages"))
    except ConversationError as exc:
        raise _bad(exc.param, str(exc)) from None


def _conversation(body: dict[str, Any]) -> Any:
    from .assistant.conversation import Conversation, ConversationError, template_kwargs_from

    try:
        kwargs = template_kwargs_from(body.get("chat_template_kwargs"))
    except ConversationError as exc:
        raise _bad(exc.param, str(exc)) from None
    return Conversation(messages_from(body), None, kwargs)


def completion_request(payload: object, chat: bool, model: str, generator: Any) -> Completion:
    """A checked request; chat messages already in the model's template, as ids."""
    body = _body(payload)
    openai_fields.check_known(
        body,
        openai_fields.CHAT_FIELDS if chat else openai_fields.COMPLETION_FIELDS,
        "/v1/chat/completions" if chat else "/v1/completions",
    )
    openai_fields.check_asks_nothing(body)
    stream, include_usage = _stream(body)
    answer = None
    n, alternatives = openai_fields.choices_and_logprobs(body, chat, stream)
    thinking: str | None = None
    if chat:
        from .assistant.grammar import GrammarError
        from .assistant.structured import ChatAnswer, plan, vocabulary_of
        from .generator import OptionError

        conversation = _conversation(body)
        try:
            source = generator.config.chat_template  # the tool syntax is read off the source: no compile
            template = source.get("tool_use") or source.get("default") if isinstance(source, dict) else source
            form = plan(body, template, lambda: vocabulary_of(generator))
        except GrammarError as exc:
            raise _bad(exc.param, str(exc)) from None
        try:
            text = generator.render_messages(conversation.messages, form.template_tools(), conversation.template_kwargs)
        except OptionError as exc:
            raise _bad("messages", str(exc)) from None
        from .assistant.reasoning import thinks

        thinking = text if thinks(generator.template.source) else None
        # The rendered text carries its own special tokens, as apply_chat_template(tokenize=True) encodes it.
        prompt: str | list[int] = list(generator.tokenizer.encode(text, add_special_tokens=False).ids)
        answer = ChatAnswer(form, generator.tokenizer, generator.eos)
        default_tokens = generator.config.max_length  # OpenAI's: until the context is full
    else:
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1:
            raw = raw[0]
        prompt = _text(raw, "prompt")
        default_tokens = 16  # OpenAI's default for /v1/completions
    options = _options(body, default_tokens)
    if alternatives is not None:
        options["logprobs"] = alternatives
    return Completion(
        chat=chat,
        prompt=prompt,
        options=options,
        n=n,
        decode=lambda token: generator.tokenizer.decode([token], skip_special_tokens=False),
        stream=stream,
        include_usage=include_usage,
        model=model,
        answer=answer,
        thinking_prompt=thinking,
    )
