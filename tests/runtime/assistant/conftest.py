"""A tiny Qwen2 whose chat template renders tools as Qwen 2.5's does (Hermes' <tool_call>), served once."""

from __future__ import annotations

import pytest
from serving import Server

from tests.decoders import export_decoder, make_tiny_decoder, with_chat_template
from tests.runtime.conftest import assemble_bundle

# Qwen 2.5's tool-use template, shortened: the tools as JSON lines in the system turn, each call as
# <tool_call>{"name", "arguments"}</tool_call>, a tool's result as a user turn in <tool_response>.
HERMES = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}You are a helpful assistant.{% endif %}\n\n# Tools\n<tools>{% for tool in tools %}\n"
    "{{ tool | tojson }}{% endfor %}\n</tools>\nCall one as <tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant\n{{ message.content or '' }}"
    "{%- for call in message.tool_calls or [] %}\n<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tools_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Qwen2 with 2,048 positions (tools fill a prompt) and the Hermes template, as a bundle."""
    base = tmp_path_factory.mktemp("tools-qwen2")
    plain = make_tiny_decoder("qwen2", base / "plain", positions=2048)
    model_dir = with_chat_template(plain, base / "hf", HERMES)
    return assemble_bundle(model_dir, export_decoder(model_dir, base / "onnx"), base / "bundle", "tiny-tools")


@pytest.fixture(scope="module")
def tools_server(tools_bundle):
    server = Server(tools_bundle)
    yield server
    server.stop()
