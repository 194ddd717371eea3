"""Device measurements into a bundle: ``bench --import FILE`` and ``bench --remote HOST`` (SSH).

Over SSH it runs the system ``ssh``/``scp``, so the user's ~/.ssh/config, agent and keys work as
they do in a shell. The bundle is copied to a temp dir on the device, run there with the device's
Python (a venv made from the bundle's wheels/ or requirements.txt), and the JSON comes back on
stdout; only then is it recorded, so a failure anywhere leaves the bundle as it was.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StageError, VerifyError
from ..runtime.integrity import read_manifest, verify_dir

DEVICE_KEY = "device_bench"
MEASURED_ON = "device"
MIN_PYTHON = (3, 9)
# BatchMode: never wait for a password prompt in CI; keep-alives notice a device that went away.
SSH_OPTIONS = (
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=15",
    "-o",
    "ServerAliveInterval=5",
    "-o",
    "ServerAliveCountMax=3",
)
# Seconds for one remote step (a venv's pip install, a benchmark) before it counts as hung.
STEP_TIMEOUT = 1800


def load_result(path: Path) -> dict[str, Any]:
    """A bench document from ``python BUNDLE bench --json``; one-line errors otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        message = f"{path} is not JSON ({exc}): pass `python BUNDLE bench --json`'s output"
        raise ConfigError(message) from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith("edgepipe.bench/"):
        raise ConfigError(f"{path} is not an edgepipe.bench document (schema: {schema!r})")
    return data


# Writes a result into a published bundle (engine.publish.record_bench, handed in by the CLI: the
# bench part sits below the engine that publishes bundles).
Recorder = Callable[..., bool]


def record_device(
    root: Path, result: dict[str, Any], source: str, record_bench: Recorder
) -> tuple[dict[str, Any], bool]:
    """Record a device's bench ``result`` as the manifest's ``device_bench``, beside the host's
    ``bench``; refuse a result of another model. Returns what was recorded and whether an archive
    was rewritten."""
    try:
        manifest = read_manifest(root)
    except ValueError as exc:
        raise VerifyError(str(exc)) from None
    models = result.get("models") or {}
    measured = (models.get("model") or {}).get("sha256")
    if measured != manifest["model"]["sha256"]:
        raise VerifyError(
            f"{source} measured another model (sha256 {str(measured)[:12]}...), not this bundle's "
            f"({manifest['model']['sha256'][:12]}...): it belongs to another bundle"
        )
    recorded = {**result, "measured_on": MEASURED_ON}
    return recorded, record_bench(root, recorded, key=DEVICE_KEY)


@dataclass(frozen=True)
class Remote:
    """``[user@]host[:port]`` and how to reach it."""

    host: str
    user: str | None = None
    port: int | None = None
    ssh_config: Path | None = None
    identity: Path | None = None

    @classmethod
    def parse(cls, text: str, ssh_config: Path | None = None, identity: Path | None = None) -> Remote:
        found = re.fullmatch(r"(?:([^@\s]+)@)?(\[[0-9a-fA-F:]+\]|[^@:\s\[\]]+)(?::(\d+))?", text)
        bad_port = found and found.group(3) and not 0 < int(found.group(3)) < 65536
        # A leading "-" would reach ssh as an option (-oProxyCommand=...), not a host.
        if not found or bad_port or text.startswith("-") or found.group(2).startswith("-"):
            raise ConfigError(f"--remote {text!r} is not [user@]host[:port]")
        user, host, port = found.groups()
        return cls(host.strip("[]"), user, int(port) if port else None, ssh_config, identity)

    @property
    def name(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _options(self, port_flag: str) -> list[str]:
        args = list(SSH_OPTIONS)
        if self.ssh_config:
            args += ["-F", str(self.ssh_config)]
        if self.identity:
            args += ["-i", str(self.identity)]
        if self.port:
            args += [port_flag, str(self.port)]
        return args

    def ssh(self, *command: str, timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess:
        """Run ``command`` on the device (quoted for its shell); stdout and stderr captured."""
        remote = " ".join(shlex.quote(part) for part in command)
        return _run(["ssh", *self._options("-p"), self.name, remote], timeout, self)

    def copy(self, local: Path, remote_path: str) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host  # scp's IPv6 spelling
        destination = f"{self.user}@{host}" if self.user else host
        destination = f"{destination}:{remote_path}"
        done = _run(["scp", "-q", "-r", *self._options("-P"), str(local), destination], STEP_TIMEOUT, self)
        if done.returncode != 0:
            raise StageError(f"device {self.name}: copying the bundle failed: {_last(done)}")


def _last(done: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def _run(args: list[str], timeout: float, remote: Remote) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise StageError(f"`{args[0]}` is not installed here: install OpenSSH's client") from None
    except subprocess.TimeoutExpired:
        raise StageError(f"device {remote.name}: no answer within {timeout:g} s") from None
    if done.returncode == 255:  # ssh's own failure: the connection, not the command
        raise StageError(f"device {remote.name}: SSH failed (unreachable, or the connection dropped): {_last(done)}")
    return done


def _python(remote: Remote, python: str) -> None:
    version = "import sys; print('%d %d' % sys.version_info[:2])"
    done = remote.ssh(python, "-c", version, timeout=60)
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) != 2:
        raise StageError(f"device {remote.name}: no Python at `{python}` ({_last(done)})")
    have = (int(parts[0]), int(parts[1]))
    if have < MIN_PYTHON:
        raise StageError(
            f"device {remote.name}: Python {have[0]}.{have[1]} at `{python}`; the bundle needs "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer (pass --remote-python)"
        )


def _json(remote: Remote, done: subprocess.CompletedProcess, what: str, ok: tuple[int, ...] = (0,)) -> dict[str, Any]:
    if done.returncode not in ok:
        raise StageError(f"device {remote.name}: {what} failed: {_last(done)}")
    try:
        data: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise StageError(f"device {remote.name}: {what} printed no JSON") from None
    return data


def bench_remote(
    root: Path,
    remote: Remote,
    bench_args: list[str],
    python: str | None = None,
    progress: Any = None,
    record_bench: Recorder | None = None,
) -> tuple[dict[str, Any], bool | None]:
    """Copy the bundle to ``remote``, run ``probe`` and ``bench`` there (in a venv made from its
    wheels or requirements.txt, or with ``python`` as it is), record the result with
    ``record_bench`` when given. Returns the result and whether an archive was rewritten (None: not recorded)."""
    say = progress or (lambda message: None)
    problems = verify_dir(root)
    if problems:
        raise VerifyError(f"{root}: does not match its manifest ({problems[0]}); rebuild it")
    _python(remote, python or "python3")
    made = remote.ssh("mktemp", "-d", "/tmp/edgepipe-bench.XXXXXX", timeout=60)
    workdir = made.stdout.strip()
    if made.returncode != 0 or not workdir.startswith("/tmp/edgepipe-bench."):
        raise StageError(f"device {remote.name}: cannot make a temp dir: {_last(made)}")
    try:
        say(f"copying {root.name} to {remote.name}:{workdir}")
        remote.copy(root, f"{workdir}/bundle")
        bundle = f"{workdir}/bundle"
        if python is None:
            say("making a venv from the bundle's " + ("wheels" if (root / "wheels").is_dir() else "requirements.txt"))
            python = f"{workdir}/venv/bin/python"
            offline = ["--no-index", "--find-links", f"{bundle}/wheels"]
            install = [
                python,
                "-m",
                "pip",
                "install",
                "-q",
                *(offline if (root / "wheels").is_dir() else []),
                "-r",
                f"{bundle}/requirements.txt",
            ]
            made = remote.ssh("python3", "-m", "venv", f"{workdir}/venv")
            if made.returncode == 0:
                made = remote.ssh(*install)
            if made.returncode != 0:
                raise StageError(f"device {remote.name}: installing the runtime failed: {_last(made)}")
        say("probing")
        probe = _json(remote, remote.ssh(python, bundle, "probe", "--json"), "probe")
        say("benchmarking")
        result = _json(remote, remote.ssh(python, bundle, "bench", "--json", *bench_args), "bench")
        say("re-running the build's accuracy check (selftest)")
        checked = remote.ssh(python, bundle, "selftest", "--json")
        # 5: below the bar, which `edgepipe check` reports; 2: nothing to check in this bundle.
        if checked.returncode in (0, 5):
            result["selftest"] = _json(remote, checked, "selftest", ok=(0, 5))
    finally:
        with contextlib.suppress(StageError):  # a device gone away keeps the copy in its /tmp
            remote.ssh("rm", "-rf", workdir, timeout=60)
    if record_bench is None:
        return {**result, "measured_on": MEASURED_ON, "probe": probe}, None
    return record_device(root, {**result, "probe": probe}, f"the benchmark on {remote.name}", record_bench)
