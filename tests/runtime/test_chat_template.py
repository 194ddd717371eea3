"""The model's own chat template, rendered by the bundle's sandboxed jinja2 exactly as
transformers' apply_chat_template renders it; hostile templates refused at build, bounded at request."""

import json
import time
from datetime import datetime

import pytest

from edgepipe.errors import ModelError
from edgepipe.runtime.assistant.template import ChatTemplate, TemplateError, TemplateRefused
from edgepipe.runtime.generator import GenerationConfig
from tests.decoders import with_chat_template
from tests.runtime.chat_templates import CONVERSATIONS, FAMILIES, source, tokenizer

DATES = (datetime(2026, 12, 8, 9, 30), datetime(2027, 2, 1, 23, 59))


def expected(tok, messages, tools, **kwargs):
    try:
        return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the template refuses the conversation
        return type(exc)


@pytest.fixture(scope="module")
def tokenizers():
    return {family: tokenizer(family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("when", DATES, ids=["2026-12-08", "2027-02-01"])
def test_published_templates_render_as_transformers_on_any_date(tokenizers, family, when, monkeypatch):
    import transformers.utils.chat_template_utils as rendering

    class Clock(datetime):  # transformers' strftime_now reads the time from this module's datetime
        @classmethod
        def now(cls, tz=None):
            return when

    monkeypatch.setattr(rendering, "datetime", Clock)
    tok = tokenizers[family]
    template = ChatTemplate(source(family), tok.special_tokens_map, now=lambda: when)
    rendered = 0
    for name, (messages, tools) in CONVERSATIONS.items():
        for kwargs in ({}, {"enable_thinking": False}):
            want = expected(tok, messages, tools, **kwargs)
            try:
                got = template.render(messages, tools=tools, **kwargs)  # the date from strftime_now
            except TemplateError:
                assert isinstance(want, type), f"{family} {name}: transformers renders it, the bundle refuses"
                continue
            assert got == want, f"{family} {name} {kwargs}"
            rendered += 1
    assert rendered >= 8  # a few conversations may be ones the template itself refuses (Gemma: tool roles)
    dated = {"llama-3.2": "%d %b %Y", "gpt-oss": "%Y-%m-%d"}
    if family in dated:
        assert when.strftime(dated[family]) in template.render(*CONVERSATIONS["user"])


def test_earlier_reasoning_is_stripped_as_the_templates_do(tokenizers):
    messages, _ = CONVERSATIONS["reasoning history"]
    for family in ("qwen3", "deepseek-r1-distill"):
        text = ChatTemplate(source(family), tokenizers[family].special_tokens_map).render(messages)
        assert "Two and two make four" not in text and "4" in text, family
    qwen = ChatTemplate(source("qwen3"), {})
    assert qwen.render(messages[:2], enable_thinking=False).endswith("<think>\n\n</think>\n\n")
    r1 = ChatTemplate(source("deepseek-r1-distill"), {})
    assert r1.render(messages[:2]).endswith("<｜Assistant｜><think>\n")


def test_a_template_that_raises_says_its_message():
    template = ChatTemplate("{{ raise_exception('System role not supported') }}")
    with pytest.raises(TemplateError, match="^System role not supported$"):
        template.render([{"role": "user", "content": "hi"}])


HOSTILE = {
    "class": "{{ messages.__class__.__mro__ }}",
    "globals": "{{ raise_exception.__globals__['os'] }}",
    "attr filter": "{{ (messages|attr('__cla' ~ 'ss__')) }}",
    "file": "{% include '/etc/passwd' %}",
    "loop": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "doubling": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "width": "{{ 'x'|center(1000000000) }}",
    "replace": "{% set ns = namespace(s='xx') %}{% for i in range(9) %}{% set ns.s = ns.s|replace('x', ns.s) %}{% endfor %}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_templates_cannot_escape_or_stall(name):
    started = time.monotonic()
    with pytest.raises(TemplateRefused) as caught:
        ChatTemplate(HOSTILE[name]).render([{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 5
    assert "\n" not in str(caught.value)


def test_a_hostile_template_is_refused_at_build(decoder_bundle, tmp_path):
    from edgepipe.tasks.decoder_runtime import runtime_config

    bundle = decoder_bundle("qwen2")
    model_dir = with_chat_template(bundle.model_dir, tmp_path / "hostile", HOSTILE["loop"])
    with pytest.raises(ModelError, match="the chat template is refused: the chat template (ran|took) more than"):
        runtime_config(model_dir, bundle.root / "model" / "model.onnx", 1, 1, ["CPUExecutionProvider"])


def test_the_build_ships_the_template_and_checks_it(decoder_bundle, tmp_path, caplog):
    from edgepipe.tasks.decoder_runtime import runtime_config

    bundle = decoder_bundle("qwen2")
    onnx_model = bundle.root / "model" / "model.onnx"
    model_dir = with_chat_template(bundle.model_dir, tmp_path / "qwen3", source("qwen3"))
    config = runtime_config(model_dir, onnx_model, 1, 1, ["CPUExecutionProvider"])
    assert config.chat_template == source("qwen3") and config.chat_off is None
    assert config.special_tokens["eos_token"] == "<|im_end|>"
    assert GenerationConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    # A template that refuses every conversation: chat off, and the build says why.
    model_dir = with_chat_template(bundle.model_dir, tmp_path / "refusing", "{{ raise_exception('no chat') }}")
    with caplog.at_level("WARNING"):
        config = runtime_config(model_dir, onnx_model, 1, 1, ["CPUExecutionProvider"])
    assert config.chat_template is None
    assert config.chat_off == "the chat template renders none of the check conversations"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{model_dir}: /v1/chat/completions is off: {config.chat_off}"]
