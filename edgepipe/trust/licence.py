"""A model's licence: read from its card, config, GGUF metadata and licence files, named as an SPDX
expression (or a ``LicenseRef-`` id of ScanCode's index, which ``license-expression`` ships), and
checked against a licence policy before a build."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

# Hugging Face's licence ids that are not SPDX ids, as ScanCode's keys (their index names them
# LicenseRef-scancode-<key>). Llama 3 (no point release) has no ScanCode entry.
HF_IDS = {
    "llama2": "llama-2-license-2023",
    "llama3.1": "llama-3.1-license-2024",
    "llama3.2": "llama-3.2-license-2024",
    "llama3.3": "llama-3.3-license-2024",
    "llama4": "llama-4-license-2025",
    "gemma": "gemma-tou-2024-04-01",
    "bigscience-bloom-rail-1.0": "bigscience-rail-1.0",
    "bigscience-openrail-m": "bigscience-open-rail-m",
    "bigcode-openrail-m": "bigcode-open-rail-m-v1",
    "deepseek": "deepseek-la-1.0",
    "falcon-2-11b-license": "falcon-2-11b-1.0",
}
# The first words of well-known licence texts, for a LICENSE file that comes without a declared id.
_TEXT_HEADS = (
    (re.compile(r"LLAMA 3\.2 COMMUNITY LICENSE", re.I), "llama3.2"),
    (re.compile(r"LLAMA 3\.1 COMMUNITY LICENSE", re.I), "llama3.1"),
    (re.compile(r"LLAMA 3\.3 COMMUNITY LICENSE", re.I), "llama3.3"),
    (re.compile(r"LLAMA 2 COMMUNITY LICENSE", re.I), "llama2"),
    (re.compile(r"Gemma Terms of Use", re.I), "gemma"),
    (re.compile(r"Apache License\s+Version 2\.0", re.I), "Apache-2.0"),
    (re.compile(r"^\s*MIT License|Permission is hereby granted, free of charge", re.I | re.M), "MIT"),
)
_FILE_STEMS = ("LICENSE", "LICENCE", "COPYING", "NOTICE", "USE_POLICY", "ACCEPTABLE_USE_POLICY")
NONE = "NOASSERTION"
# What a licence asks of whoever ships the model, for the bundle's README (first match wins).
_OBLIGATIONS = (
    (
        re.compile(r"llama-3\.(\d)-license"),
        'Display "Built with Llama" with the product; ship the licence (licenses/) with this notice: '
        '"Llama 3.{0} is licensed under the Llama 3.{0} Community License, Copyright © Meta Platforms, Inc. '
        'All Rights Reserved."; a product with more than 700 million monthly active users needs a licence '
        "from Meta; use follows Meta's Acceptable Use Policy.",
    ),
    (
        re.compile(r"llama-2-license"),
        'Ship the licence (licenses/) with this notice: "Llama 2 is licensed under the LLAMA 2 Community '
        'License, Copyright © Meta Platforms, Inc. All Rights Reserved."; a product with more than 700 '
        "million monthly active users needs a licence from Meta.",
    ),
    (
        re.compile(r"gemma-tou"),
        'Pass on this notice: "Gemma is provided under and subject to the Gemma Terms of Use found at '
        'ai.google.dev/gemma/terms", and the use restrictions of its Prohibited Use Policy.',
    ),
    (
        re.compile(r"open-rail|bigscience-rail"),
        "The licence's use restrictions (its Attachment A) must be passed on in every licence granted "
        "for the model or the product that contains it.",
    ),
    (re.compile(r"^Apache-2\.0$"), "Keep the licence and any NOTICE file (licenses/) with the model."),
)


@lru_cache(maxsize=1)
def _licensing() -> Any:
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


@lru_cache(maxsize=1)
def _scancode() -> dict[str, str]:
    """ScanCode's licence keys, each with its SPDX id or LicenseRef id."""
    from license_expression import get_license_index

    return {e["license_key"]: e["spdx_license_key"] for e in get_license_index() if e.get("spdx_license_key")}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.") or "unknown"


def canonical(text: str) -> str:
    """An SPDX expression for ``text``: an SPDX id or expression in any case, a Hugging Face licence
    id, a ScanCode key; else ``LicenseRef-edgepipe-<text>``."""
    from license_expression import ExpressionError

    text = text.strip()
    key = HF_IDS.get(text.lower()) or (text.lower() if text.lower() in _scancode() else None)
    if key:
        return _scancode()[key]
    try:
        parsed = _licensing().parse(text, validate=True)
    except (ExpressionError, TypeError, ValueError):
        return f"LicenseRef-edgepipe-{_slug(text)}"
    return str(parsed.render()) if parsed is not None else f"LicenseRef-edgepipe-{_slug(text)}"


def url_of(licence_id: str) -> str | None:
    if licence_id.startswith("LicenseRef-scancode-"):
        return f"https://scancode-licensedb.aboutcode.org/{licence_id.removeprefix('LicenseRef-scancode-')}.html"
    if licence_id.startswith("LicenseRef-"):
        return None
    return f"https://spdx.org/licenses/{licence_id}.html"


@dataclass(frozen=True)
class Licence:
    """What a model is licensed under and where that was read."""

    expression: str | None  # an SPDX expression; None: the model declares none
    declared: str | None = None  # what the source wrote ("llama3.2", "other")
    where: str | None = None  # "model card", "config.json", "GGUF metadata", "LICENSE"
    name: str | None = None  # license_name, for "other"
    url: str | None = None
    files: tuple[Path, ...] = field(default=())

    @property
    def shown(self) -> str:
        if self.expression is None:
            return "no licence declared"
        said = f" (declared '{self.declared}' in the {self.where})" if self.declared != self.expression else ""
        return f"{self.expression}{said}"

    def ids(self) -> list[str]:
        """The licence ids in the expression, in order."""
        if self.expression is None:
            return []
        if self.expression.startswith("LicenseRef-edgepipe-"):
            return [self.expression]
        return [str(s.key) for s in _licensing().license_symbols(self.expression)]

    def obligations(self) -> list[str]:
        found = []
        for licence_id in self.ids():
            for pattern, text in _OBLIGATIONS:
                match = pattern.search(licence_id)
                if match:
                    found.append(text.format(*match.groups()))
                    break
        return found

    def to_json(self, folder: str = "licenses") -> dict[str, Any]:
        """The manifest's record; ``folder``: where the bundle ships the files."""
        return {
            "expression": self.expression,
            "declared": self.declared,
            "where": self.where,
            "name": self.name,
            "url": self.url,
            "files": [f"{folder}/{p.name}" for p in self.files],
        }


def front_matter(source: Path) -> dict[str, Any]:
    import yaml

    try:
        card = (source / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", card, re.S)
    try:
        front = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return {}
    return front if isinstance(front, dict) else {}


def licence_files(source: Path) -> tuple[Path, ...]:
    """The licence, notice and use-policy files at the top of a model directory."""
    if not source.is_dir():
        return ()
    return tuple(
        sorted(
            p for p in source.iterdir() if p.is_file() and not p.is_symlink() and p.name.upper().startswith(_FILE_STEMS)
        )
    )


def _declared(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return " AND ".join(v.strip() for v in value)
    return None


def resolve(source: Path, metadata: dict[str, Any] | None = None) -> Licence:
    """The licence of the model in ``source`` (a directory); ``metadata``: a GGUF's key/values."""
    files = licence_files(source)
    front = front_matter(source)
    candidates: list[tuple[str, str | None, str | None, str | None]] = []
    declared = _declared(front.get("license"))
    if declared:
        candidates.append((declared, "model card", _declared(front.get("license_name")), front.get("license_link")))
    try:
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and _declared(config.get("license")):
        candidates.append((str(_declared(config.get("license"))), "config.json", None, None))
    meta = metadata or {}
    if _declared(meta.get("general.license")):
        candidates.append(
            (
                str(_declared(meta.get("general.license"))),
                "GGUF metadata",
                _declared(meta.get("general.license.name")),
                meta.get("general.license.link"),
            )
        )
    for said, where, name, link in candidates:
        if said.lower() in ("other", "unknown") and name:
            expression = canonical(name)
        elif said.lower() in ("other", "unknown"):
            expression = f"LicenseRef-edgepipe-{said.lower()}"
        else:
            expression = canonical(said)
        url = link if isinstance(link, str) and link.startswith(("http://", "https://")) else url_of(expression)
        return Licence(expression, said, where, name, url, files)
    for path in files:  # no declaration: the text of a LICENSE file names it, when we know it
        try:
            head = path.read_text(encoding="utf-8", errors="replace")[:2000]
        except OSError:
            continue
        for pattern, licence_id in _TEXT_HEADS:
            if pattern.search(head):
                expression = canonical(licence_id)
                return Licence(expression, licence_id, path.name, None, url_of(expression), files)
    if files:
        expression = f"LicenseRef-edgepipe-{_slug(files[0].stem)}"
        return Licence(expression, None, files[0].name, None, None, files)
    return Licence(None)
