"""`make e2e-arm64`: the rpi5 bundle, its aarch64 wheels installed, run in an emulated Pi 5 userland.

Needs root and Debian's apt (it installs qemu-user-static and debootstrap when they are missing) and
the network to a Debian mirror and PyPI. The rootfs is cached in --root, so reruns take minutes.
Under qemu 7.2 onnxruntime's aarch64 wheels >= 1.28 crash at import, hence the pinned runtime, and
qemu's default `-cpu max` gives wrong int8 results, hence `-cpu cortex-a76`, the Pi 5's core
(seen when this script was made). Emulated timings mean nothing; the numbers it prints are cosine similarities.
It fails unless the arm64 minimum meets the profile's bar and the manifest's (x86-measured) minimum.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from edgepipe import sources
from edgepipe.runtime.embedder import Embedder
from edgepipe.stages.embedding_reference import reference_embeddings
from edgepipe.tasks.texts import builtin_texts

PYTHON = "usr/bin/python3.11"
SITE = "opt/edgepipe-site"


def sh(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def ensure_tools() -> None:
    missing = [t for t in ("qemu-aarch64-static", "debootstrap", "dpkg-deb") if not shutil.which(t)]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(
            f"error: {', '.join(missing)} missing; run as root, or apt-get install qemu-user-static debootstrap first"
        )
    sh("apt-get", "update", "-qq")
    sh(
        "apt-get",
        "install",
        "-y",
        "-qq",
        "qemu-user-static",
        "debootstrap",
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def ensure_rootfs(root: Path, suite: str, mirror: str) -> None:
    """A Debian arm64 userland with python3: debootstrap's first stage, its .debs unpacked."""
    if (root / PYTHON).is_file():
        return
    shutil.rmtree(root, ignore_errors=True)
    sh(
        "debootstrap",
        "--foreign",
        "--arch=arm64",
        "--variant=minbase",
        "--include=python3",
        suite,
        str(root),
        mirror,
        stdout=subprocess.DEVNULL,
    )
    # The second stage would run the arm64 maintainer scripts; python needs only its files.
    for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)


def install_wheels(bundle: Path, root: Path) -> Path:
    """Unpack the bundle's wheels into a site dir in the rootfs (its python has no pip)."""
    site = root / SITE
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    for wheel in sorted((bundle / "wheels").glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    return site


def emulated(root: Path, site: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = ["qemu-aarch64-static", "-cpu", "cortex-a76", "-L", str(root), str(root / PYTHON), *args]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "LC_ALL": "C.UTF-8"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(".arm64-root"))
    p.add_argument("--out", type=Path, default=Path("dist-arm64"))
    p.add_argument("--onnxruntime", default="1.27.0", help="onnxruntime for the emulated run")
    p.add_argument("--suite", default="bookworm")
    p.add_argument("--mirror", default="http://deb.debian.org/debian")
    args = p.parse_args()

    ensure_tools()
    ensure_rootfs(args.root.resolve(), args.suite, args.mirror)
    root = args.root.resolve()
    sh(
        sys.executable,
        "-m",
        "edgepipe",
        "build",
        "--target",
        "rpi5",
        "--out",
        str(args.out),
        "--with-wheels",
        "--runtime-version",
        args.onnxruntime,
    )
    bundle = (args.out / "all-minilm-l6-v2-rpi5").resolve()
    manifest = json.loads((bundle / "manifest.json").read_text())
    site = install_wheels(bundle, root)

    probe = emulated(
        root,
        site,
        "-c",
        "import platform, onnxruntime, numpy, tokenizers; print("
        "platform.machine(), onnxruntime.__version__, numpy.__version__, "
        "tokenizers.__version__)",
    )
    if probe.returncode != 0:
        print(f"error: the runtime does not import under qemu: {probe.stderr.strip()[-300:]}")
        return 1
    print(f"emulated: {probe.stdout.strip()} (machine, onnxruntime, numpy, tokenizers)")
    check = emulated(root, site, str(bundle), "verify")
    print(f"bundle verify under qemu: {check.stdout.strip() or check.stderr.strip()}")

    texts = builtin_texts("embedding")
    start = time.perf_counter()
    run = emulated(root, site, str(bundle), "embed", *texts)
    if run.returncode != 0:
        print(f"error: embed failed under qemu: {run.stderr.strip()[-300:]}")
        return 1
    arm = np.array([json.loads(line)["embedding"] for line in run.stdout.splitlines()])
    seconds = time.perf_counter() - start
    max_length = json.loads((bundle / "runtime.json").read_text())["max_length"]
    reference = reference_embeddings(sources.packaged_default(), texts, max_length)
    host = Embedder.from_bundle(bundle).embed(texts)

    vs_ref, vs_host = cosines(arm, reference), cosines(arm, host)
    host_ref = cosines(host, reference)
    worst = np.argsort(vs_ref)[:5]
    print(f"\n{len(texts)} texts embedded on emulated Cortex-A76 in {seconds:.0f} s (emulated: the time means nothing)")
    print(f"{'cosine vs fp32 PyTorch':<34} {'min':>8} {'p5':>8} {'mean':>8}")
    for label, c in (
        (f"arm64, onnxruntime {args.onnxruntime}", vs_ref),
        (f"x86 host, onnxruntime {manifest['versions']['onnxruntime']}", host_ref),
    ):
        print(f"{label:<34} {c.min():8.4f} {np.percentile(c, 5):8.4f} {c.mean():8.4f}")
    print(f"arm64 vs x86 run of the same bundle: min {vs_host.min():.4f}, mean {vs_host.mean():.4f}")
    print("worst texts on arm64: " + "; ".join(f"{vs_ref[i]:.4f} {texts[i][:30]!r}" for i in worst))
    bar, recorded = manifest["accuracy"]["bar"], manifest["accuracy"]["model"]["min"]
    print(f"manifest (evaluated on the x86 host): min {recorded}, bar {bar}")
    # The bundle's own check from the data it ships, as a device runs it.
    selftest = emulated(root, site, str(bundle), "selftest", "--json")
    if selftest.returncode in (0, 5):
        device = json.loads(selftest.stdout)["device"]
        print(f"python BUNDLE selftest under qemu: min {device['min']} (host: {recorded}), exit {selftest.returncode}")
    else:
        print(f"error: selftest failed under qemu: {selftest.stderr.strip()[-300:]}")
    # The device must meet the profile's bar and what the manifest claims (as tests/test_e2e.py).
    low = vs_ref.min()
    ok = low >= bar and low >= recorded - 1e-4
    print(
        f"{'PASS' if ok else 'FAIL'}: arm64 min cosine {low:.6f} "
        f"{'>=' if low >= bar else '<'} bar {bar}, "
        f"{'>=' if low >= recorded - 1e-4 else '<'} the manifest's min {recorded}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
