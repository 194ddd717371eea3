"""``python <bundle> probe``: this machine as the bundle sees it, and what of it misses the target.

Standard library only (onnxruntime if installed), so it runs before ``requirements.txt`` is.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

SCHEMA = "edgepipe.probe/1"
# Kernel flag (x86 `flags`, arm64 `Features`) -> the name targets use in `cpu.isa`.
FLAGS = {
    "asimd": "neon",
    "asimddp": "dotprod",
    "asimdhp": "fp16",
    "i8mm": "i8mm",
    "sve": "sve",
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_int8": "amx",
}
# A target feature this CPU may offer under another name: AVX-512 VNNI does AVX-VNNI's work.
SATISFIED_BY = {"avx_vnni": ("avx_vnni", "avx512_vnni")}
# /proc/cpuinfo's "CPU part" on arm64 (Arm Ltd. implementer 0x41) -> the core's name.
ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE",
    "0xd4f": "Neoverse-V2",
}
# macOS sysctl keys (value 1 when present) -> target feature names.
SYSCTL_FLAGS = {
    "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_FP16": "fp16",
    "hw.optional.neon": "neon",
    "hw.optional.avx2_0": "avx2",
    "hw.optional.fma": "fma",
    "hw.optional.avx512f": "avx512f",
    "hw.optional.avx512vnni": "avx512_vnni",
}


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """CPU model, logical cores and ISA features (target names) from a /proc/cpuinfo text."""
    model = board = part = None
    cores, flags = 0, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            cores += 1
        elif key == "model name" and model is None:
            model = value
        elif key == "CPU part" and part is None:
            part = value.lower()
        elif key == "Model" and board is None:
            board = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
    core = model or ARM_PARTS.get(part or "", f"CPU part {part}" if part else None)
    return {
        "cpu": core or "unknown",
        "board": board,
        "cores": cores or None,
        "isa": sorted({name for flag, name in FLAGS.items() if flag in flags}),
    }


def parse_meminfo(text: str) -> dict[str, int | None]:
    """Total and available memory (MB) from a /proc/meminfo text."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) // 1024  # kB -> MiB
    return {"total_mb": values.get("MemTotal"), "available_mb": values.get("MemAvailable")}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _run(*cmd: str) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _sysctl_cpu() -> dict[str, Any]:
    """macOS: the CPU from sysctl."""
    out = _run("sysctl", "-a") or ""
    values = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return {
        "cpu": values.get("machdep.cpu.brand_string", platform.processor() or "unknown"),
        "board": values.get("hw.model"),
        "cores": int(values["hw.ncpu"]) if values.get("hw.ncpu", "").isdigit() else None,
        "isa": sorted({name for key, name in SYSCTL_FLAGS.items() if values.get(key) == "1"}),
    }


def _memory() -> dict[str, int | None]:
    text = _read("/proc/meminfo")
    if text is not None:
        return parse_meminfo(text)
    total = _run("sysctl", "-n", "hw.memsize")
    return {"total_mb": int(total) // 2**20 if total and total.strip().isdigit() else None, "available_mb": None}


def _os() -> dict[str, Any]:
    release = _read("/etc/os-release") or ""
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', release, re.MULTILINE)
    libc, version = platform.libc_ver()
    return {
        "system": platform.system(),
        "release": platform.release(),
        "distribution": pretty.group(1) if pretty else None,
        "libc": f"{libc} {version}".strip() or None,
    }


def _gpu() -> dict[str, Any] | None:
    """An NVIDIA GPU (nvidia-smi) or a Jetson (its L4T release file), if there is one."""
    smi = _run("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader")
    if smi and smi.strip():
        name, _, rest = smi.strip().splitlines()[0].partition(",")
        return {"vendor": "nvidia", "name": name.strip(), "details": rest.strip()}
    tegra = _read("/etc/nv_tegra_release")
    model = (_read("/proc/device-tree/model") or "").strip("\x00\n ")
    if tegra or "jetson" in model.lower():
        return {"vendor": "nvidia", "name": model or "Jetson", "details": (tegra or "").strip()}
    return None


def _onnxruntime() -> dict[str, Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return {"version": ort.__version__, "providers": list(ort.get_available_providers())}


def probe() -> dict[str, Any]:
    """This machine: CPU, memory, OS, Python, onnxruntime and a GPU, as the SCHEMA document."""
    if sys.platform == "darwin":
        cpu = _sysctl_cpu()
    else:
        cpu = parse_cpuinfo(_read("/proc/cpuinfo") or "")
        cpu["cores"] = cpu["cores"] or os.cpu_count()
    return {
        "schema": SCHEMA,
        "machine": platform.machine(),
        **cpu,
        "memory": _memory(),
        "os": _os(),
        "python": platform.python_version(),
        "onnxruntime": _onnxruntime(),
        "gpu": _gpu(),
    }


def arch(name: str) -> str:
    """``uname -m``'s spelling of an architecture (arm64 -> aarch64, amd64 -> x86_64)."""
    return {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}.get(name.lower(), name.lower())


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def in_range(version: str, spec: str) -> bool:
    """Whether ``version`` lies in a PEP 440 range of ``>=``/``<=``/``<``/``>``/``==``/``!=``
    clauses (what targets use), compared on major.minor.micro."""
    have = _version(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op = re.match(r"(>=|<=|==|!=|<|>|~=)", clause)
        sign = op.group(1) if op else "=="
        want = _version(clause[len(sign) if op else 0 :])
        n = len(want)
        pad = (have + (0,) * n)[: max(n, len(have))]
        want = want + (0,) * (len(pad) - n)
        ok = {
            ">=": pad >= want,
            "<=": pad <= want,
            ">": pad > want,
            "<": pad < want,
            "==": pad[:n] == want[:n],
            "!=": pad[:n] != want[:n],
            "~=": pad >= want and pad[: max(n - 1, 1)] == want[: max(n - 1, 1)],
        }[sign]
        if not ok:
            return False
    return True


def mismatches(found: dict[str, Any], target: dict[str, Any], profile: dict[str, Any] | None = None) -> list[str]:
    """One line per way this machine does not fit the bundle's target (and profile)."""
    name = target.get("name", "?")
    lines = []
    wanted = target.get("platform", {}).get("arch")
    if wanted and arch(str(found["machine"])) != arch(wanted):
        lines.append(f"this machine is {found['machine']}; target {name} is {wanted}")
    else:
        isa = set(found.get("isa") or [])
        by = f"the {profile['name']} profile" if profile else f"target {name}"
        for feature in target.get("cpu", {}).get("isa", []):
            if not isa.intersection(SATISFIED_BY.get(feature, (feature,))):
                lines.append(
                    f"no {feature} on this CPU ({found['cpu']}): {by} expects it; its kernels run slower or not at all"
                )
    runtime, ort = target.get("runtime", {}), found.get("onnxruntime")
    spec = runtime.get("onnxruntime")
    if ort is None:
        lines.append("onnxruntime is not installed: pip install -r requirements.txt")
    else:
        if spec and not in_range(ort["version"], spec):
            lines.append(f"onnxruntime {ort['version']} is outside target {name}'s range {spec}")
        wanted = (profile or {}).get("execution_providers") or runtime.get("execution_providers")
        if wanted and not set(wanted).intersection(ort["providers"]):
            lines.append(
                f"none of the providers {', '.join(wanted)} is available here "
                f"(onnxruntime offers {', '.join(ort['providers'])})"
            )
    ram = target.get("budgets", {}).get("ram_mb")
    memory = found.get("memory") or {}
    for key, what in (("total_mb", "in all"), ("available_mb", "free")):
        if ram and memory.get(key) is not None and memory[key] < ram:
            lines.append(f"{memory[key]} MB of memory {what}, under target {name}'s {ram:g} MB budget")
    return lines


def describe(found: dict[str, Any]) -> str:
    """The probe as a few plain lines."""
    mem, ort, os_ = found["memory"], found["onnxruntime"], found["os"]
    lines = [
        f"cpu         {found['cpu']} ({found['machine']}, {found['cores']} cores)"
        + (f" on {found['board']}" if found.get("board") else ""),
        f"isa         {' '.join(found['isa']) or 'none of the listed features'}",
        f"memory      {mem['total_mb']} MB total, {mem['available_mb']} MB available",
        f"os          {os_['distribution'] or os_['system']} ({os_['release']}, {os_['libc']})",
        f"python      {found['python']}",
        "onnxruntime " + (f"{ort['version']} ({', '.join(ort['providers'])})" if ort else "not installed"),
    ]
    if found.get("gpu"):
        lines.append(f"gpu         {found['gpu']['name']} {found['gpu']['details']}".rstrip())
    return "\n".join(lines)
