"""Prompt fidelity: the bundle's chat template renderer against transformers' apply_chat_template.

The published templates of tests/data/chat_templates, on tokenizers with each family's special
tokens, over conversations with system prompts, several turns, reasoning in the history, tools and
tool results, with and without ``enable_thinking``, on two dates (transformers' clock is set to
the same day). Prints a Markdown table: renders equal, refused by both, different (the goal: 0).

    python benchmarks/prompt_fidelity.py
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import transformers.utils.chat_template_utils as rendering  # noqa: E402

from edgepipe.runtime.assistant.template import ChatTemplate, TemplateError  # noqa: E402
from tests.runtime.chat_templates import CONVERSATIONS, FAMILIES, source, tokenizer  # noqa: E402

DATES = (datetime(2026, 12, 8, 9, 30), datetime(2027, 2, 1, 23, 59))


def _clock(when: datetime) -> type[datetime]:
    class Clock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return when

    return Clock


def main() -> int:
    print("| template | equal | refused by both | different | median render ms |")
    print("|---|---|---|---|---|")
    different_total = 0
    for family in FAMILIES:
        tok = tokenizer(family)
        equal = refused = different = 0
        times: list[float] = []
        for when in DATES:
            rendering.datetime = _clock(when)  # type: ignore[attr-defined,misc]
            template = ChatTemplate(source(family), tok.special_tokens_map, now=lambda when=when: when)
            for messages, tools in CONVERSATIONS.values():
                for kwargs in ({}, {"enable_thinking": False}):
                    try:
                        want: str | None = tok.apply_chat_template(
                            messages, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs
                        )
                    except Exception:  # noqa: BLE001 - the template refuses the conversation
                        want = None
                    started = time.perf_counter()
                    try:
                        got: str | None = template.render(messages, tools=tools, **kwargs)
                    except TemplateError:
                        got = None
                    times.append((time.perf_counter() - started) * 1000)
                    if got is None and want is None:
                        refused += 1
                    elif got == want:
                        equal += 1
                    else:
                        different += 1
        different_total += different
        print(f"| {family} | {equal} | {refused} | {different} | {statistics.median(times):.2f} |")
    return 1 if different_total else 0


if __name__ == "__main__":
    raise SystemExit(main())
