"""``python <bundle> probe``: recorded /proc/cpuinfo texts checked against each target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgepipe import catalog
from edgepipe.runtime import probe

DATA = Path(__file__).parent.parent / "data" / "cpuinfo"
ORT = {"version": "1.27.0", "providers": ["CPUExecutionProvider"]}
MEMORY = {"total_mb": 8000, "available_mb": 7000}
OS = {"system": "Linux", "release": "6.6.51", "distribution": "Debian 12", "libc": "glibc 2.36"}


def machine(name: str, arch: str, **changes) -> dict:
    found = probe.parse_cpuinfo((DATA / f"{name}.txt").read_text())
    extra = {"os": OS, "python": "3.11.2", "gpu": None}
    return {"machine": arch, "memory": MEMORY, "onnxruntime": ORT, **extra, **found, **changes}


def against(found: dict, target_name: str) -> list[str]:
    target = catalog.targets().load(target_name)
    profile = catalog.profiles().load(target.default_profile)
    return probe.mismatches(found, target.model_dump(mode="json"), profile.model_dump(mode="json"))


def test_recorded_cpus_parse():
    pi5 = probe.parse_cpuinfo((DATA / "rpi5.txt").read_text())
    assert pi5 == {
        "cpu": "Cortex-A76",
        "board": "Raspberry Pi 5 Model B Rev 1.0",
        "cores": 4,
        "isa": ["dotprod", "fp16", "neon"],
    }
    pi4 = probe.parse_cpuinfo((DATA / "rpi4.txt").read_text())
    assert (pi4["cpu"], pi4["cores"], pi4["isa"]) == ("Cortex-A72", 4, ["neon"])
    ice = probe.parse_cpuinfo((DATA / "icelake.txt").read_text())
    assert ice["cpu"] == "Intel(R) Core(TM) i7-1065G7 CPU @ 1.30GHz" and ice["cores"] == 8
    assert {"avx2", "fma", "avx512f", "avx512_vnni"} <= set(ice["isa"])
    assert "avx_vnni" not in ice["isa"] and "i8mm" not in pi5["isa"]


def test_pi5_fits_rpi5_and_nothing_x86():
    pi5 = machine("rpi5", "aarch64")
    assert against(pi5, "rpi5") == []
    for x86 in ("laptop-avx2", "laptop-vnni"):
        assert against(pi5, x86) == [f"this machine is aarch64; target {x86} is x86_64"]
    # The Jetson's fp16 profile needs a GPU provider the Pi's onnxruntime lacks.
    (line,) = against(pi5, "jetson-orin")
    assert line.startswith("none of the providers TensorrtExecutionProvider, CUDAExecutionProvider")


def test_pi4_lacks_dotprod_and_fp16():
    lines = against(machine("rpi4", "aarch64"), "rpi5")
    assert [line.split(" on this CPU")[0] for line in lines] == ["no dotprod", "no fp16"]
    assert "(Cortex-A72): the arm64-int8 profile expects it" in lines[0]


def test_icelake_fits_both_laptops_its_avx512_vnni_counts():
    ice = machine("icelake", "x86_64")
    assert against(ice, "laptop-vnni") == [] and against(ice, "laptop-avx2") == []
    assert against(ice, "rpi5") == ["this machine is x86_64; target rpi5 is aarch64"]
    no_vnni = {**ice, "isa": ["avx2", "fma"]}
    (line,) = against(no_vnni, "laptop-vnni")
    assert line.startswith("no avx_vnni on this CPU")


@pytest.mark.parametrize("recorded", [False, True])
def test_this_host(recorded: bool):
    text = (DATA / "host-epyc.txt").read_text() if recorded else Path("/proc/cpuinfo").read_text()
    found = {"machine": "x86_64", "memory": MEMORY, "onnxruntime": ORT}
    found |= probe.parse_cpuinfo(text)
    assert {"avx2", "fma"} <= set(found["isa"]) and found["cores"] >= 1
    assert against(found, "laptop-avx2") == []
    assert against(found, "rpi5")[0].endswith("target rpi5 is aarch64")


def test_runtime_memory_and_versions_checked():
    pi5 = machine("rpi5", "aarch64", memory={"total_mb": 400, "available_mb": 100})
    pi5["onnxruntime"] = {"version": "1.19.2", "providers": ["CPUExecutionProvider"]}
    assert against(pi5, "rpi5") == [
        "onnxruntime 1.19.2 is outside target rpi5's range >=1.20,<2",
        "400 MB of memory in all, under target rpi5's 512 MB budget",
        "100 MB of memory free, under target rpi5's 512 MB budget",
    ]
    assert against({**pi5, "onnxruntime": None}, "rpi5")[0].startswith("onnxruntime is not inst")
    assert probe.in_range("1.27.0", ">=1.20,<2") and not probe.in_range("2.0.1", ">=1.20,<2")
    assert probe.in_range("1.20", ">=1.20.0") and not probe.in_range("1.27.1", "==1.27.0")


def test_probe_command_on_a_bundle(tiny_bundle):
    """The bundle's own probe, on this host, against its laptop-avx2 target."""
    root = str(tiny_bundle.bundle_dir)
    done = subprocess.run([sys.executable, root, "probe", "--json", "--strict"], capture_output=True, text=True)
    data = json.loads(done.stdout)
    assert data["schema"] == "edgepipe.probe/1" and data["target"] == "laptop-avx2"
    assert data["mismatches"] == [] and done.returncode == 0, done.stderr
    assert data["onnxruntime"]["version"] and "CPUExecutionProvider" in data["onnxruntime"]["providers"]
    assert data["memory"]["total_mb"] > 0 and data["python"].startswith("3.")
    text = subprocess.run([sys.executable, root, "probe"], capture_output=True, text=True)
    assert "target      laptop-avx2: fits" in text.stdout and text.returncode == 0


def test_strict_exits_3_on_a_mismatch(tiny_bundle, monkeypatch, capsys):
    from edgepipe.runtime import cli

    monkeypatch.setattr(probe, "probe", lambda: machine("rpi5", "aarch64"))
    assert cli.main(tiny_bundle.bundle_dir, ["probe"]) == 0
    assert cli.main(tiny_bundle.bundle_dir, ["probe", "--strict"]) == cli.EXIT_SETUP
    out = capsys.readouterr().out
    assert "mismatch: this machine is aarch64; target laptop-avx2 is x86_64" in out
