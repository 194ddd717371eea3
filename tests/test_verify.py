"""`edgepipe verify`: every way a bundle or archive can be wrong gets exit 6 and one line."""

import io
import shutil
import tarfile

import pytest
from click.testing import CliRunner

from edgepipe.cli import main


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle.bundle_dir, tmp_path / tiny_bundle.bundle_dir.name)


def verify(path):
    return CliRunner().invoke(main, ["verify", str(path)])


def test_intact_dir_and_archive_pass(tiny_bundle):
    for path in (tiny_bundle.bundle_dir, tiny_bundle.archive):
        result = verify(path)
        assert result.exit_code == 0, result.output
        assert "files match manifest.json" in result.output


def test_flipped_byte(bundle_copy):
    model = bundle_copy / "model" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    result = verify(bundle_copy)
    assert result.exit_code == 6
    assert "does not match its manifest: sha256 mismatch: model/model.onnx" in result.output


def test_added_file(bundle_copy):
    (bundle_copy / "extra.py").write_text("print('hi')")
    result = verify(bundle_copy)
    assert result.exit_code == 6 and "file not in manifest: extra.py" in result.output


def test_removed_file(bundle_copy):
    (bundle_copy / "tokenizer" / "tokenizer.json").unlink()
    result = verify(bundle_copy)
    assert result.exit_code == 6 and "missing file: tokenizer/tokenizer.json" in result.output


def test_not_a_bundle(tmp_path):
    result = verify(tmp_path)
    assert result.exit_code == 6 and "no manifest.json; this is not an edgepipe bundle" in result.output


def archive_with(tmp_path, tiny_bundle, extra: tarfile.TarInfo, data: bytes = b"") -> str:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(tiny_bundle.archive) as src, tarfile.open(path, "w:gz") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        dst.addfile(extra, io.BytesIO(data) if extra.isfile() else None)
    return str(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda n: tarfile.TarInfo(f"{n}/../../escape.txt"), "escapes the bundle with '..'"),
        (lambda n: tarfile.TarInfo("/etc/evil"), "has an absolute path"),
        (lambda n: _link(f"{n}/link", tarfile.SYMTYPE), "is a link"),
        (lambda n: _link(f"{n}/hard", tarfile.LNKTYPE), "is a link"),
        (lambda n: _link(f"{n}/dev", tarfile.CHRTYPE), "is a device or special file"),
        (lambda n: tarfile.TarInfo(f"{n}/README.md"), "appears twice"),  # found by make fuzz
        (
            lambda n: tarfile.TarInfo(f"{n}/\x80\x00b"),
            "has a NUL byte in its name",
        ),  # PAX keeps the NUL
        (lambda n: tarfile.TarInfo(f"{n}/README.md/x"), "clashes with another"),
    ],
)
def test_unsafe_archive_entries_are_refused(tmp_path, tiny_bundle, make, message):
    outside = tmp_path.parent / "escape.txt"
    member = make(tiny_bundle.bundle_dir.name)
    if member.isfile():
        member.size = 4
    path = archive_with(tmp_path, tiny_bundle, member, b"evil")
    result = verify(path)
    assert result.exit_code == 6 and "refused: entry" in result.output and message in result.output
    assert not outside.exists()


def _link(name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd"
    return info


def test_garbage_archive(tmp_path):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"not an archive at all")
    result = verify(path)
    assert result.exit_code == 6 and "not a readable .tar.gz archive" in result.output
