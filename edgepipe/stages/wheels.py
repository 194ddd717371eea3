"""Wheels: the bundle's requirements downloaded for the target's platform, for an offline install."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import StageError
from . import digests

DIR = "wheels"
# pip accepts a manylinux wheel only for the exact tags it is given: a glibc 2.28 device also runs
# the 2_17 (manylinux2014) wheels that tokenizers and protobuf publish, so every older tag is passed.
_MANYLINUX = re.compile(r"manylinux_2_(\d+)_(\w+)")
_OLDEST_GLIBC = 17


class WheelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requirements: str = Field(description="The bundle's requirements.txt, as downloaded.")
    platforms: list[str] = Field(description="pip platform tags the device accepts, newest first.")
    python: str = Field(description="The device's Python version, e.g. '3.11'.")
    implementation: str = Field(default="cp", description="Python implementation tag.")
    pip: str = Field(description="pip's version: another resolver may pick other files.")


def platform_tags(wheel_platform: str) -> list[str]:
    """``wheel_platform`` and every older manylinux tag a device with it also runs."""
    match = _MANYLINUX.fullmatch(wheel_platform)
    if not match:
        return [wheel_platform]
    newest, arch = int(match.group(1)), match.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(newest, _OLDEST_GLIBC - 1, -1)]
    return [*tags, f"manylinux2014_{arch}"] if newest >= _OLDEST_GLIBC else tags


def pip_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pip")
    except metadata.PackageNotFoundError:
        return "not installed"


def run(config: WheelsConfig, out: Path) -> dict[str, Any]:
    """``pip download`` binary wheels of the requirements into ``out/wheels``."""
    dest = out / DIR
    dest.mkdir()
    with tempfile.TemporaryDirectory(prefix="edgepipe-wheels-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(config.requirements, encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--only-binary=:all:",
            *(arg for tag in config.platforms for arg in ("--platform", tag)),
            "--python-version",
            config.python,
            "--implementation",
            config.implementation,
            "--dest",
            str(dest),
            "--requirement",
            str(req),
            "--no-input",
            "--progress-bar",
            "off",
        ]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            raise StageError("downloading wheels took over 30 minutes; check the network") from None
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR:")]
        reason = (errors[-1] if errors else (proc.stderr.strip().splitlines() or ["?"])[-1]).strip()
        raise StageError(
            f"pip could not download the wheels for {config.platforms[0]}, Python "
            f"{config.python}: {reason.removeprefix('ERROR: ')}; check the network or the "
            "target's platform, or build without --with-wheels"
        )
    wheels = sorted(p.name for p in dest.iterdir())
    return {"outputs": digests(out), "wheels": wheels, "platforms": config.platforms}
