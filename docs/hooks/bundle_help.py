"""mkdocs hook: the bundle's own command line (``python <bundle> ...``, argparse in edgepipe/runtime/cli.py)
rendered into the reference where a page says ``<!-- bundle-commands -->``, so it cannot drift from the
code, as mkdocs-click does for the click commands."""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- bundle-commands -->"


def _commands() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the page must not depend on it
    from edgepipe.runtime.cli import parser

    top = parser()
    (sub,) = (a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    parts = []
    for name, command in sub.choices.items():
        parts.append(f"### `python BUNDLE {name}`\n\n{helps.get(name) or ''}\n\n```\n{command.format_help()}```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return markdown.replace(MARKER, _commands()) if MARKER in markdown else markdown
