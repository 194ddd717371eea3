"""A real OpenSSH server for tests: loopback only, this user, keys and config in a temp dir.

Nothing outside the temp dir is touched but /run/sshd, the empty directory sshd insists on when it
runs as root (Debian's service creates it too). It is stopped, with every session it started, by
``stop()``; ``kill_sessions_running(word)`` kills it mid-session, as a device that goes away.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd")


def find_sshd() -> str | None:
    return next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), shutil.which("sshd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Sshd:
    process: subprocess.Popen
    port: int
    dir: Path
    identity: Path
    ssh_config: Path

    def kill_sessions_running(self, program: str, word: str, timeout: float) -> bool:
        """When a session runs ``program`` with ``word`` in its command line, kill sshd and all
        its sessions; whether that happened within ``timeout`` seconds. Only the program itself
        counts, not the shell that starts it: a shell killed in its rc files could leave their
        locks behind (pyenv's rehash lock, for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            for pid in descendants(self.process.pid):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if cmdline.startswith(program.encode() + b" ") and word.encode() in cmdline:
                    self.stop()
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def start_sshd(work: Path) -> Sshd:
    sshd = find_sshd()
    assert sshd, "sshd is not installed (make test-deps installs Debian's openssh-server)"
    work.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / key)], check=True)
    authorized = work / "authorized_keys"
    authorized.write_text((work / "client_key.pub").read_text())
    authorized.chmod(0o600)
    port, user = free_port(), getpass.getuser()
    (work / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work / 'host_key'}\n"
        f"AuthorizedKeysFile {authorized}\nPidFile {work / 'sshd.pid'}\nAllowUsers {user}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nMaxStartups 20\n"
        "Subsystem sftp internal-sftp\n"
    )
    (work / "ssh_config").write_text(
        f"Host 127.0.0.1\n  User {user}\n  UserKnownHostsFile {work / 'known_hosts'}\n"
        "  StrictHostKeyChecking accept-new\n  IdentitiesOnly yes\n  LogLevel ERROR\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = (work / "sshd.log").open("w")
    process = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(work / "sshd_config")], stdout=log, stderr=log, stdin=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Sshd(process, port, work, work / "client_key", work / "ssh_config")
        except OSError:
            assert process.poll() is None, (work / "sshd.log").read_text()
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"sshd did not listen on 127.0.0.1:{port}: {(work / 'sshd.log').read_text()}")
