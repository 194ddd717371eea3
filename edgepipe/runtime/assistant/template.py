"""The model's own chat template, rendered with jinja2's sandbox as transformers renders it.

transformers (``apply_chat_template``) renders a template with ``ImmutableSandboxedEnvironment``,
``trim_blocks`` and ``lstrip_blocks`` on, the ``loopcontrols`` extension and a ``{% generation %}``
tag, the globals ``raise_exception`` and ``strftime_now``, its own ``tojson`` filter (no HTML
escaping, with ``indent``, ``separators``, ``sort_keys`` and ``ensure_ascii``) and the tokenizer's
special tokens (``bos_token``, ``eos_token``, ...) as variables. This module does the same, so a
bundle renders every template as the build's transformers did, on any day.

A template is code from a download. The sandbox refuses ``__class__``, ``__globals__`` and every
other underscore attribute, there is no loader (no ``include``/``import``/``extends``), and a
render is bounded: a step budget and a deadline (a tracer on the template's own frames), the size
of what operators, calls and filters build, and the size of the text. Past a bound it raises
TemplateError, which the server answers as a 400.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from types import FrameType
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_CHARS = 1 << 22  # 4 Mi characters: any string or list a render builds, and the prompt
MAX_STEPS = 2_000_000  # template lines executed in one render; a long conversation takes ~1e4
MAX_SECONDS = 2.0
TEMPLATE_FILE = "<chat-template>"


class TemplateError(Exception):
    """The template refused this conversation (its own raise_exception) or failed on it."""


class TemplateRefused(TemplateError):
    """The template reached past the sandbox or ran past a bound: code a build does not ship."""


def _size(value: object) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else 0


def _check_arguments(function: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """TemplateError before a call whose arguments ask for a huge result (a width, a replacement)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CHARS:
            raise TemplateRefused(f"the chat template passed {value} to a function (at most {MAX_CHARS})")
    texts = [a for a in args if isinstance(a, str)]
    if getattr(function, "__name__", "") in ("replace", "do_replace") and len(texts) >= 3 - (
        getattr(function, "__self__", None) is not None
    ):
        bound = getattr(function, "__self__", None)
        subject = bound if bound is not None else texts.pop(0)
        old, new = texts[0], texts[1]
        if isinstance(subject, str) and len(subject) + subject.count(old) * len(new) > MAX_CHARS:
            raise TemplateRefused(f"the chat template built a string of more than {MAX_CHARS} characters")


def _bounded(value: Any, what: str) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4096:
        raise TemplateRefused("the chat template built a number of more than 4096 bits")
    if _size(value) > MAX_CHARS:
        raise TemplateRefused(f"the chat template built {what} of more than {MAX_CHARS} items")
    return value


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training): its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


class _Code(CodeGenerator):
    """Jinja's code generator with ``a ~ b`` joined through a size check."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: object) -> None:
    raise TemplateError(str(message))


class _Environment(ImmutableSandboxedEnvironment):
    code_generator_class = _Code
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, now: Callable[[], datetime]) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_Generation, jinja2.ext.loopcontrols],
        )
        self.filters = {name: self._filter(f) for name, f in self.filters.items()}
        self.filters["tojson"] = self._filter(_tojson)
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = lambda fmt: now().strftime(fmt)

    @staticmethod
    def _filter(function: Callable[..., Any]) -> Callable[..., Any]:
        def bounded(*args: Any, **kwargs: Any) -> Any:
            _check_arguments(function, args, kwargs)
            return _bounded(function(*args, **kwargs), "a value")

        if hasattr(function, "jinja_pass_arg"):  # the filter is handed its context first
            bounded.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
        return bounded

    def bounded_concat(self, parts: tuple[Any, ...]) -> str:
        texts = [str(p) for p in parts]
        if sum(map(len, texts)) > MAX_CHARS:
            raise TemplateRefused(f"the chat template built a string of more than {MAX_CHARS} characters")
        return "".join(texts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise TemplateRefused("the chat template raised a number to a power over 64")
        if operator == "*" and isinstance(left, int) and _size(right):
            left, right = right, left
        if operator == "*" and _size(left) and isinstance(right, int) and _size(left) * right > MAX_CHARS:
            raise TemplateRefused(f"the chat template built a value of more than {MAX_CHARS} items")
        if operator == "+" and _size(left) + _size(right) > MAX_CHARS:
            raise TemplateRefused(f"the chat template built a value of more than {MAX_CHARS} items")
        return _bounded(super().call_binop(context, operator, left, right), "a value")

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_arguments(__obj, args, kwargs)
        return _bounded(super().call(__context, __obj, *args, **kwargs), "a value")

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise TemplateRefused(f"the chat template reaches for {attribute!r}: refused by the sandbox")


class _Budget:
    """A tracer on the template's frames: TemplateError past MAX_STEPS lines or MAX_SECONDS."""

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def call(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self.line if frame.f_code.co_filename == TEMPLATE_FILE else None

    def line(self, frame: FrameType, event: str, arg: Any) -> Any:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateRefused(f"the chat template ran more than {MAX_STEPS} steps")
        if not self.steps & 1023 and time.monotonic() > self.deadline:
            raise TemplateRefused(f"the chat template took more than {MAX_SECONDS:g} s")
        return self.line


class ChatTemplate:
    """One model's chat template (or its named templates) and the special tokens it sees."""

    def __init__(
        self,
        source: str | Mapping[str, str],
        special_tokens: Mapping[str, Any] | None = None,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        # transformers' named templates: "default", and "tool_use" where a request has tools.
        self.named = {"default": source} if isinstance(source, str) else dict(source)
        if "default" not in self.named:
            raise TemplateError(f"the model's chat templates have no 'default' ({', '.join(sorted(self.named))})")
        self.source = self.named["default"]
        self.special_tokens = dict(special_tokens or {})
        self.environment = _Environment(now)
        self.templates = {name: self._compile(text) for name, text in self.named.items()}

    def _compile(self, source: str) -> jinja2.Template:
        """The template, refused where it reads files or names an underscore attribute."""
        try:
            ast = self.environment.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"the chat template does not parse: {exc.message} (line {exc.lineno})") from None
        for kind in (jinja2.nodes.Include, jinja2.nodes.Import, jinja2.nodes.FromImport, jinja2.nodes.Extends):
            if any(True for _ in ast.find_all(kind)):
                raise TemplateRefused(f"the chat template uses {kind.__name__.lower()}: templates read no files")
        for node in ast.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
            name = getattr(node, "attr", None)
            argument = getattr(node, "arg", None)
            if name is None and isinstance(argument, jinja2.nodes.Const):
                name = argument.value
            if isinstance(name, str) and name.startswith("_"):
                raise TemplateRefused(f"the chat template reaches for {name!r}: refused by the sandbox")
        code = self.environment.compile(source, filename=TEMPLATE_FILE)
        return self.environment.template_class.from_code(self.environment, code, self.environment.globals)

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """The prompt text, as ``apply_chat_template(..., tokenize=False)`` gives it."""
        variables = {
            **self.special_tokens,
            "messages": messages,
            "tools": tools,
            "documents": documents,
            "add_generation_prompt": add_generation_prompt,
            **kwargs,
        }
        budget = _Budget()
        previous = sys.gettrace()
        sys.settrace(budget.call)
        try:
            template = self.templates["tool_use" if tools and "tool_use" in self.templates else "default"]
            return self._join(template.generate(variables))
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template refused the conversation: {exc}") from None
        except (RecursionError, MemoryError) as exc:
            raise TemplateRefused(f"the chat template failed: {type(exc).__name__}") from None
        except Exception as exc:  # noqa: BLE001 - a template error of any Python type is the request's
            raise TemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from None
        finally:
            sys.settrace(previous)

    @staticmethod
    def _join(chunks: Iterator[str]) -> str:
        parts, size = [], 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_CHARS:
                raise TemplateRefused(f"the chat template wrote more than {MAX_CHARS} characters")
            parts.append(chunk)
        return "".join(parts)
