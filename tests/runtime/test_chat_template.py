"""Multi-turn chat without Jinja: the build's per-role template renders as apply_chat_template does."""

import json

import pytest

from edgepipe.runtime.chat import SYSTEM_FOLD, SYSTEM_NONE, SYSTEM_TURN, ChatError, ChatTemplate
from edgepipe.runtime.generator import GenerationConfig
from edgepipe.tasks.decoder_runtime import chat_template, multi_turn_template
from tests.decoders import TEMPLATES, train_bpe, with_chat_template

# Not the build's own check conversations: other texts, lengths and turn counts.
CONVERSATIONS = [
    [("user", "What is the capital of France?")],
    [("system", "You answer in one word."), ("user", "Capital of Peru?")],
    [
        ("user", "hi"),
        ("assistant", "Hello! How can I help?"),
        ("user", "  tell me a joke\n"),
        ("assistant", "\nWhy did the chicken cross the road?  "),
        ("user", "why?"),
    ],
    [
        ("system", "  Be terse.\n"),
        ("user", "2+2"),
        ("assistant", "4"),
        ("user", "and times 3 — in ünïcode?"),
    ],
]
MODES = {"qwen2": SYSTEM_TURN, "mistral": SYSTEM_TURN, "phi3": SYSTEM_FOLD}
# Gemma 2's template raises on a system message; Llama 2's folds it inside a stripped content.
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'assistant') %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


def expected(tokenizer, conversation):
    messages = [{"role": r, "content": c} for r, c in conversation]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def tokenizers():
    return {kind: train_bpe(kind) for kind in TEMPLATES}


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_one_message_chat_survives_templates_that_trim(tokenizers, kind):
    """Gemma's and Llama 3's templates trim each message; the one-message affixes still come out."""
    tokenizer = tokenizers[kind]
    prefix, suffix = chat_template(None, tokenizer)
    text = "What is the capital of France?"
    assert prefix + text + suffix == expected(tokenizer, [("user", text)])


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_multi_turn_renders_exactly_as_apply_chat_template(tokenizers, kind):
    tokenizer = tokenizers[kind]
    template, reason = multi_turn_template(None, tokenizer)
    assert template is not None and reason == ""
    assert template.system_mode == MODES[kind]
    for conversation in CONVERSATIONS:
        text = template.render(conversation)
        assert text == expected(tokenizer, conversation)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        messages = [{"role": r, "content": c} for r, c in conversation]
        assert ids == list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
    # What runtime.json stores reads back as the same template.
    assert ChatTemplate.from_json(json.loads(json.dumps(template.to_json()))) == template


def test_a_template_without_a_system_role_refuses_system_messages(tokenizers):
    tokenizer = tokenizers["phi3"]
    tokenizer.chat_template = GEMMA2
    try:
        template, _ = multi_turn_template(None, tokenizer)
    finally:
        tokenizer.chat_template = TEMPLATES["phi3"]
    assert template is not None and template.system_mode == SYSTEM_NONE
    conversation = CONVERSATIONS[2]
    tokenizer.chat_template = GEMMA2
    try:
        assert template.render(conversation) == expected(tokenizer, conversation)
    finally:
        tokenizer.chat_template = TEMPLATES["phi3"]
    with pytest.raises(ChatError, match="no system role"):
        template.render(CONVERSATIONS[1])


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([("assistant", "hi")], "message 0 is 'assistant' where 'user' belongs"),
        ([("user", "a"), ("user", "b")], "message 1 is 'user' where 'assistant' belongs"),
        ([("user", "a"), ("assistant", "b")], "must end with a user message"),
        ([("system", "s")], "must end with a user message"),
    ],
)
def test_conversations_the_build_did_not_check_are_refused(tokenizers, messages, message):
    template, _ = multi_turn_template(None, tokenizers["qwen2"])
    with pytest.raises(ChatError, match=message):
        template.render(messages)


def test_templates_it_cannot_reproduce_are_refused_in_one_line(tokenizers):
    tokenizer = tokenizers["mistral"]
    try:
        for source, reason in (
            (LLAMA2, "chat template not reproducible without Jinja: check conversation"),
            (
                "{% for m in messages %}{{ m['content'] | lower }}{% endfor %}",
                "chat template not reproducible without Jinja: the user message does not appear",
            ),
            (
                "{% if messages | length > 1 %}{{ raise_exception('one message only') }}{% endif %}"
                "{{ messages[0]['content'] }}",
                "chat template does not render a multi-turn conversation: one message only",
            ),
        ):
            tokenizer.chat_template = source
            template, got = multi_turn_template(None, tokenizer)
            assert template is None and got.startswith(reason) and "\n" not in got, got
    finally:
        tokenizer.chat_template = TEMPLATES["mistral"]


def test_runtime_json_of_older_bundles_still_reads():
    old = {
        "task": "text-generation",
        "num_layers": 2,
        "num_kv_heads": 2,
        "head_dim": 16,
        "eos_token_ids": [2],
        "max_length": 256,
        "chat_prefix": "<|im_start|>user\n",
        "chat_suffix": "<|im_end|>\n<|im_start|>assistant\n",
    }
    config = GenerationConfig.from_json(old)
    assert config.chat_template is None and config.chat_off is None
    assert config.chat_prefix == old["chat_prefix"]
    again = GenerationConfig.from_json(config.to_json())
    assert again == config


def test_the_build_keeps_one_message_chat_and_says_why_multi_turn_is_off(decoder_bundle, tmp_path, caplog):
    from edgepipe.tasks.decoder_runtime import runtime_config

    bundle = decoder_bundle("qwen2")
    # Turns joined by a separator: one message renders, but no per-role text reproduces the join.
    joined = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if not loop.last %} | {% endif %}{% endfor %}"
    )
    model_dir = with_chat_template(bundle.model_dir, tmp_path / "qwen2", joined)
    with caplog.at_level("WARNING"):
        config = runtime_config(model_dir, bundle.root / "model" / "model.onnx", 1, 1, ["CPUExecutionProvider"])
    assert config.chat_template is None and config.chat_prefix is not None
    assert config.chat_off.startswith("chat template not reproducible without Jinja")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{model_dir}: /v1/chat/completions is off: {config.chat_off}"]
    assert GenerationConfig.from_json(config.to_json()) == config
