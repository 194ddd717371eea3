"""`make -j2 bundles`: one archive per target, in parallel, and nothing rebuilt when nothing changed."""

import subprocess
import sys
from pathlib import Path

from edgepipe import catalog

ROOT = Path(__file__).resolve().parent.parent


def make(*args, cwd=ROOT):
    return subprocess.run(["make", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_parallel_bundles_then_incremental(tiny_bert_master, tmp_path):
    stamp = tmp_path / "stamp"
    stamp.touch()  # the venv running this test is the installed one
    common = [f"BIN={Path(sys.executable).parent}", f"STAMP={stamp}", f"OUT={tmp_path / 'out'}"]
    first = make("-j2", "bundles", f"MODEL={tiny_bert_master}", *common)
    assert first.returncode == 0, first.stderr
    names = {t.name for t in catalog.targets().all()}
    archives = sorted(p.name for p in (tmp_path / "out").glob("*.tar.gz"))
    assert archives == sorted(f"tiny-bert-{n}.tar.gz" for n in names)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.tar.gz")}
    again = make("bundles", f"MODEL={tiny_bert_master}", *common)
    assert again.returncode == 0 and "edgepipe build" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    verify = subprocess.run(
        [sys.executable, "-m", "edgepipe", "verify", str(tmp_path / "out" / archives[0])],
        capture_output=True,
    )
    assert verify.returncode == 0
