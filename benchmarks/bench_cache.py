"""Cold vs warm build of the default model, in one run: the warm/cold ratio (goal <= 0.15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EDGEPIPE = [sys.executable, "-m", "edgepipe"]


def timed_build(cache: Path, out: Path, target: str) -> tuple[float, dict]:
    env = {**os.environ, "EDGEPIPE_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run(
        [*EDGEPIPE, "build", "--target", target, "--out", str(out), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - start, json.loads(proc.stdout)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-") as tmp:
        root = Path(tmp)
        cold, _ = timed_build(root / "cache", root / "cold", "rpi5")
        warm, summary = timed_build(root / "cache", root / "warm", "rpi5")
        retarget, other = timed_build(root / "cache", root / "other", "laptop-avx2")
    print("build of all-MiniLM-L6-v2 for rpi5, whole `edgepipe build` process, wall clock")
    print(f"  cold (empty cache)          {cold:6.1f} s")
    print(f"  warm (unchanged)            {warm:6.1f} s   cached: {', '.join(summary['cached_stages'])}")
    print(f"  other target (laptop-avx2)  {retarget:6.1f} s   cached: {', '.join(other['cached_stages'])}")
    print(f"warm/cold ratio: {warm / cold:.3f} (goal <= 0.15)")


if __name__ == "__main__":
    main()
