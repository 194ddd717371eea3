"""`edgepipe verify`: a bundle directory or archive against its manifest, archives opened safely."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from ..errors import ModelError, VerifyError
from ..graph.checks import check_external_data
from ..runtime.integrity import read_manifest, verify_dir
from ..runtime.signature import is_signed
from . import signing


def _safe_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if not name.parts or name.parts == (".",):
        raise VerifyError(f"{archive}: refused: an entry has an empty name")
    if "\x00" in member.name:
        raise VerifyError(f"{archive}: refused: entry {member.name!r} has a NUL byte in its name")
    if name.is_absolute() or member.name.startswith(("/", "\\")):
        raise VerifyError(f"{archive}: refused: entry '{member.name}' has an absolute path")
    if ".." in name.parts:
        raise VerifyError(f"{archive}: refused: entry '{member.name}' escapes the bundle with '..'")
    if member.issym() or member.islnk():
        raise VerifyError(f"{archive}: refused: entry '{member.name}' is a link")
    if not (member.isfile() or member.isdir()):
        raise VerifyError(f"{archive}: refused: entry '{member.name}' is a device or special file")
    return name


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a bundle archive into ``dest`` after checking every entry; return the bundle dir."""
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VerifyError(f"{archive}: not a readable .tar.gz archive ({reason})") from None
    with tar:
        try:
            members = tar.getmembers()
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise VerifyError(f"{archive}: corrupt archive ({exc})") from None
        names = [_safe_member(m, archive) for m in members]
        seen: set[PurePosixPath] = set()
        for name in names:
            if name in seen:
                raise VerifyError(f"{archive}: refused: entry '{name}' appears twice")
            seen.add(name)
        tops = {n.parts[0] for n in names if n.parts}
        if len(tops) != 1:
            raise VerifyError(f"{archive}: a bundle archive holds exactly one top-level directory")
        for member, name in zip(members, names, strict=True):
            path = dest.joinpath(*name.parts)
            try:
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:  # a file where a directory belongs, or the reverse
                raise VerifyError(f"{archive}: refused: entry '{name}' clashes with another") from None
            source = tar.extractfile(member)
            if source is None:
                raise VerifyError(f"{archive}: entry '{member.name}' has no data")
            try:
                with source, open(path, "wb") as target:
                    shutil.copyfileobj(source, target)
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise VerifyError(f"{archive}: corrupt entry '{member.name}' ({exc})") from None
    return dest / tops.pop()


def _verify_dir(root: Path, shown: Path) -> int:
    try:
        problems = verify_dir(root)
        manifest = read_manifest(root)
    except ValueError as exc:
        raise VerifyError(str(exc).replace(str(root), str(shown))) from None
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerifyError(f"{shown}: does not match its manifest: {problems[0]}{more}")
    model = root / str(manifest.get("model", {}).get("path", "model/model.onnx"))
    try:
        check_external_data(model)
    except (ModelError, OSError) as exc:
        raise VerifyError(str(exc).replace(str(root), str(shown))) from None
    except Exception:  # protobuf's DecodeError and kin: the file hashes right but is no ONNX model
        raise VerifyError(f"{shown}: {model.name} is not a readable ONNX model") from None
    return len(manifest["files"])


def _verify_signed(root: Path, shown: Path, public_key: Path | None, chain: Sequence[Path]) -> tuple[int, bool]:
    if public_key is not None or chain:
        signing.check(root, public_key, chain, shown)
    return _verify_dir(root, shown), is_signed(root)


def verify(path: Path, public_key: Path | None = None, certificate_chain: Sequence[Path] = ()) -> tuple[int, bool]:
    """Number of files checked and whether the bundle is signed; with ``public_key`` (or the
    certificates to trust), the signature is checked first. VerifyError naming the first problem
    otherwise."""
    if path.is_dir():
        return _verify_signed(path, path, public_key, certificate_chain)
    if not path.is_file():
        raise VerifyError(f"{path}: no such bundle directory or archive")
    with tempfile.TemporaryDirectory(prefix="edgepipe-verify-") as tmp:
        root = extract_archive(path, Path(tmp))
        return _verify_signed(root, path, public_key, certificate_chain)
