"""A text-generation bundle's endpoints: POST /generate and OpenAI's chat and text completions."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from .. import openai_api
from ..http.json_body import RequestError
from ..http.routes import EventStream, Request, Route

NATIVE = "/generate"
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
# The fields of a /generate body and the types each may have (seed may also be null).
GENERATE_FIELDS: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "max_new_tokens": (int,),
    "temperature": (int, float),
    "top_k": (int,),
    "top_p": (int, float),
    "seed": (int, type(None)),
    "stop": (list,),
    "chat": (bool,),
}


def generate_options(payload: object) -> dict[str, Any]:
    """The keyword arguments of Generator.generate for a /generate body, or RequestError."""
    bad = HTTPStatus.BAD_REQUEST
    if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str):
        raise RequestError(bad, 'body must be a JSON object with "prompt": "..."')
    unknown = sorted(payload.keys() - GENERATE_FIELDS.keys())
    if unknown:
        raise RequestError(bad, f"unknown field {unknown[0]!r}; known: {', '.join(GENERATE_FIELDS)}")
    for key, value in payload.items():
        types = GENERATE_FIELDS[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise RequestError(bad, f'"{key}" must be {names}, not {type(value).__name__}')
    if "\x00" in payload["prompt"]:
        raise RequestError(bad, "the prompt contains a NUL character")
    return dict(payload)


class GenerationEndpoints:
    """One Generator, one generation at a time: each already uses every intra-op thread, and
    interleaving two would only make both slower."""

    native, openai_paths = NATIVE, f"{CHAT} or {COMPLETIONS}"

    def __init__(self, generator: Any, model: str) -> None:
        self.generator, self.model = generator, model
        self.lock = threading.Lock()
        from ..assistant.structured import warm

        # The grammar library's view of the tokenizer takes ~1 s to build: not on the first JSON request.
        threading.Thread(target=warm, args=(generator,), daemon=True).start()

    def routes(self) -> dict[str, Route]:
        return {
            NATIVE: Route("POST", self.generate),
            CHAT: Route("POST", lambda request: self.complete(request, chat=True)),
            COMPLETIONS: Route("POST", lambda request: self.complete(request, chat=False)),
        }

    def generate(self, request: Request) -> dict[str, Any]:
        from ..generator import GenerationError

        options = generate_options(request.json())
        try:
            with self.lock:
                result = self.generator.generate(options.pop("prompt"), **options)
        except GenerationError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        response: dict[str, Any] = result.to_json()
        return response

    def _run(
        self,
        completion: openai_api.Completion,
        on_text: Callable[[str], None] | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> Any:
        from ..generator import GenerationError

        constraint = None
        if completion.answer is not None and completion.answer.plan.grammar is not None:
            from ..assistant.grammar import GrammarError
            from ..assistant.structured import vocabulary_of

            try:
                constraint = completion.answer.plan.constraint(vocabulary_of(self.generator))
            except GrammarError as exc:
                raise RequestError(HTTPStatus.BAD_REQUEST, str(exc), param=exc.param) from None
        try:
            with self.lock:
                return self.generator.generate(
                    completion.prompt, **completion.options, on_text=on_text, on_token=on_token, constraint=constraint
                )
        except GenerationError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc), param="messages") from None

    def complete(self, request: Request, chat: bool) -> dict[str, Any] | EventStream:
        """A completion whole, or as server-sent events."""
        completion = openai_api.completion_request(request.json(), chat, self.model, self.generator)
        if not completion.stream:
            seed = completion.options.get("seed")
            results = []
            for index in range(completion.n):  # n choices, one after another; seed + i for the i-th
                if seed is not None:
                    completion.options["seed"] = seed + index
                results.append(self._run(completion))
            return completion.response(results)

        def produce(send: Callable[[object], None]) -> None:
            started = False

            def start() -> None:
                nonlocal started
                if not started:
                    send(completion.chunk("" if completion.chat else None, first=True))
                    started = True

            def piece(text: str | None) -> None:
                for kind, part in completion.deltas(text):
                    start()
                    send(completion.chunk(part, kind=kind))

            answer = completion.answer
            if answer is not None and answer.reads_tools:  # deltas from tokens: a call's markers are special tokens

                def token(token: int) -> None:
                    for delta in answer.deltas(token):
                        start()
                        send(completion.delta_chunk(delta))

                result = self._run(completion, on_token=token)
                start()
                deltas, reason = answer.finish(result)
                for delta in deltas:
                    send(completion.delta_chunk(delta))
                send(completion.delta_chunk({}, reason))
            else:
                result = self._run(completion, on_text=piece)
                piece(None)
                start()
                reason = answer.finish(result)[1] if answer else openai_api.FINISH_REASONS[result.stop_reason]
                send(completion.chunk(None, reason))
            if completion.include_usage:
                send(completion.usage_chunk(result))

        return EventStream(produce)
