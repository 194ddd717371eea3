"""Signed bundles: `keygen`, `sign`, `build --sign-key`, `verify --public-key` and the bundle's own
`verify --public-key`, on an embedding and a text-generation bundle; every tamper case is exit 6
and one line.

Two builds in all: the shared tiny embedding bundle (signed by `edgepipe sign`) and one fp32 tiny
Llama built with `--sign-key` (then rebuilt from the cache, to compare the archives' bytes).
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from edgepipe.runtime.integrity import MANIFEST, SIGNATURE, bundle_files, sha256_file
from tests.decoders import make_tiny_decoder


def cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code: int, *phrases: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("keys") / "ci"
    result = cli("keygen", "--out", out)
    assert result.exit_code == 0, result.output
    return out / "private.pem", out / "public.pem"


@pytest.fixture(scope="module")
def other_pair(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("other-keys")
    assert cli("keygen", "--out", out).exit_code == 0
    return out / "private.pem", out / "public.pem"


@pytest.fixture(scope="module")
def signed_embedding(tiny_bundle, pair, tmp_path_factory) -> Path:
    """A copy of the shared tiny embedding bundle and its archive, signed by `edgepipe sign`."""
    out = tmp_path_factory.mktemp("signed-embedding")
    root = Path(shutil.copytree(tiny_bundle.bundle_dir, out / tiny_bundle.bundle_dir.name))
    shutil.copyfile(tiny_bundle.archive, out / tiny_bundle.archive.name)
    result = cli("sign", root, "--key", pair[0])
    assert result.exit_code == 0, result.output
    assert f"signed {root}: model.sig, {root.name}.tar.gz" in result.output
    return root


def build_llama(model: Path, out: Path, key: Path) -> dict:
    result = cli(
        "build",
        "--model",
        model,
        "--target",
        "laptop-avx2",
        "--profile",
        "fp32",
        "--no-bench",
        "--out",
        out,
        "--sign-key",
        key,
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert pem_body(key).decode()[:40] not in result.output  # nor in the build's log
    return json.loads(result.stdout.strip().splitlines()[-1])


def pem_body(key: Path) -> bytes:
    return b"".join(line for line in key.read_bytes().splitlines() if not line.startswith(b"---"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_tiny_decoder("llama", tmp_path_factory.mktemp("decoder") / "tiny-llama")


@pytest.fixture(scope="module")
def signed_generation(llama, pair, tmp_path_factory) -> Path:
    """A text-generation bundle signed by `edgepipe build --sign-key`."""
    summary = build_llama(llama, tmp_path_factory.mktemp("signed-generation"), pair[0])
    assert summary["signed"] is True and summary["task"] == "text-generation"
    return Path(summary["bundle_dir"])


@pytest.fixture(params=["embedding", "generation"])
def signed(request) -> Path:
    return request.getfixturevalue(f"signed_{request.param}")


@pytest.fixture
def copy(signed, tmp_path) -> Path:
    return Path(shutil.copytree(signed, tmp_path / signed.name))


def test_keygen_writes_a_private_key_only_its_owner_reads(pair, tmp_path):
    private, public = pair
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    shutil.copyfile(private, tmp_path / "private.pem")
    one_line_error(cli("keygen", "--out", tmp_path), 3, "never overwrites")


def test_signed_bundle_and_archive_verify_with_the_key(signed, pair):
    for path in (signed, signed.parent / f"{signed.name}.tar.gz"):
        result = cli("verify", path, "--public-key", pair[1], "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {
            "path": str(path),
            "ok": True,
            "files": len(json.loads((signed / MANIFEST).read_text())["files"]),
            "signed": True,
            "signature_checked": True,
        }
    result = cli("verify", signed)
    assert result.exit_code == 0 and "signed (model.sig; pass --public-key" in result.output
    # The signature is model-signing's own format: its CLI verifies the bundle too.
    proc = subprocess.run(
        [
            Path(sys.executable).parent / "model_signing",
            "verify",
            "key",
            signed,
            "--signature",
            signed / SIGNATURE,
            "--public_key",
            pair[1],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "Verification succeeded" in proc.stdout, proc.stderr


def test_unsigned_bundle_says_so(tiny_bundle, pair):
    result = cli("verify", tiny_bundle.bundle_dir)
    assert result.exit_code == 0 and "; not signed" in result.output
    one_line_error(
        cli("verify", tiny_bundle.bundle_dir, "--public-key", pair[1]),
        6,
        "not signed (no model.sig)",
    )


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_missing_signature(copy, pair):
    (copy / SIGNATURE).unlink()
    one_line_error(cli("verify", copy, "--public-key", pair[1]), 6, "not signed (no model.sig)")


def test_wrong_key(copy, other_pair):
    one_line_error(
        cli("verify", copy, "--public-key", other_pair[1]),
        6,
        f"not made with the private key of {other_pair[1]}",
    )


def test_wrong_key_without_the_key_hint(copy, other_pair):
    """An attacker may drop the public-key hint from the signature: the ECDSA check still fails."""
    sig = json.loads((copy / SIGNATURE).read_text())
    sig["verificationMaterial"]["publicKey"]["hint"] = ""
    (copy / SIGNATURE).write_text(json.dumps(sig))
    one_line_error(cli("verify", copy, "--public-key", other_pair[1]), 6, "not made with")


def test_changed_file(copy, pair):
    flip_byte(copy / "model" / "model.onnx")
    one_line_error(
        cli("verify", copy, "--public-key", pair[1]),
        6,
        "files differ from what was signed: Hash mismatch for 'model/model.onnx'",
    )


def test_added_file(copy, pair):
    (copy / "extra.py").write_text("print('hi')")
    one_line_error(
        cli("verify", copy, "--public-key", pair[1]),
        6,
        "files differ from what was signed: Extra files found",
        "extra.py",
    )
    # Without a key, the signature is the only file the manifest may lack.
    one_line_error(cli("verify", copy), 6, "file not in manifest: extra.py")


def test_manifest_rewritten_to_match_a_changed_file(copy, pair):
    tokenizer = copy / "tokenizer" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"[UNK]"', '"[UNX]"', 1) + " ")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"] = {rel: sha256_file(p) for rel, p in bundle_files(copy).items()}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert cli("verify", copy).exit_code == 0  # the hashes alone are fooled
    one_line_error(cli("verify", copy, "--public-key", pair[1]), 6, "Hash mismatch for")


def test_truncated_signature(copy, pair):
    data = (copy / SIGNATURE).read_bytes()
    (copy / SIGNATURE).write_bytes(data[: len(data) // 2])
    one_line_error(cli("verify", copy, "--public-key", pair[1]), 6, "unreadable signature model.sig")


def test_signature_of_another_bundle(copy, signed_embedding, signed_generation, pair):
    other = signed_generation if copy.name == signed_embedding.name else signed_embedding
    shutil.copyfile(other / SIGNATURE, copy / SIGNATURE)
    one_line_error(cli("verify", copy, "--public-key", pair[1]), 6, "files differ from what was signed")


def run_bundle(root: Path, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_bundle_verifies_its_own_signature(copy, pair, other_pair):
    cached = copy / "edgepipe_runtime" / "__pycache__"  # what running the bundle may write
    cached.mkdir(exist_ok=True)
    (cached / "cli.cpython-311.pyc").write_bytes(b"bytecode")
    proc = run_bundle(copy, "verify", "--public-key", pair[1])
    assert proc.returncode == 0 and "; signature checked" in proc.stdout, proc.stderr
    proc = run_bundle(copy, "verify", "--public-key", other_pair[1])
    assert proc.returncode == 6 and proc.stderr.count("\n") == 1
    assert "not made with the private key" in proc.stderr
    proc = run_bundle(copy, "verify")  # hash-only, model-signing not needed
    assert proc.returncode == 0 and "signed (pass --public-key to check it)" in proc.stdout


def test_bundle_without_model_signing_says_how_to_get_it(copy, pair, capsys, monkeypatch):
    from edgepipe.runtime.cli import main as bundle_main

    monkeypatch.setitem(sys.modules, "model_signing", None)  # import fails as where not installed
    assert bundle_main(copy, ["verify", "--public-key", str(pair[1])]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'model-signing" in err


def test_bad_keys_are_exit_3(signed_embedding, pair, tmp_path):
    (tmp_path / "junk.pem").write_text("not a key")
    for args in (
        ("verify", signed_embedding, "--public-key", tmp_path / "junk.pem"),
        ("verify", signed_embedding, "--public-key", tmp_path / "missing.pem"),
        ("sign", signed_embedding, "--key", tmp_path / "junk.pem"),
        ("sign", signed_embedding, "--key", pair[1]),  # a public key
    ):
        assert cli(*args).exit_code == 3


def test_sign_refuses_a_bundle_that_does_not_match_its_manifest(copy, pair):
    flip_byte(copy / "model" / "model.onnx")
    before = (copy / SIGNATURE).read_bytes()
    one_line_error(cli("sign", copy, "--key", pair[0]), 6, "rebuild it before signing it")
    assert (copy / SIGNATURE).read_bytes() == before


def test_private_key_never_lands_in_the_bundle_or_output(signed_generation, pair, llama, tmp_path):
    body = pem_body(pair[0])
    der = base64.b64decode(body)
    archive = signed_generation.parent / f"{signed_generation.name}.tar.gz"
    blobs = [p.read_bytes() for p in signed_generation.rglob("*") if p.is_file()]
    blobs.append(gzip.decompress(archive.read_bytes()))
    for blob in blobs:
        assert body not in blob and der not in blob and body[:40] not in blob
    result = cli("sign", signed_generation, "--key", pair[0])
    assert result.exit_code == 0 and body[:40].decode() not in result.output


def test_signed_archive_is_reproducible(signed_generation, llama, pair, tmp_path):
    """The same key and inputs give the same archive bytes: the rebuild (from the stage cache)
    and a second `edgepipe sign` of the same bundle, in new processes' hash seeds alike."""
    archive = signed_generation.parent / f"{signed_generation.name}.tar.gz"
    rebuilt = build_llama(llama, tmp_path / "again", pair[0])
    assert Path(rebuilt["archive"]).read_bytes() == archive.read_bytes()
    before = archive.read_bytes()
    proc = subprocess.run(
        [Path(sys.executable).parent / "edgepipe", "sign", signed_generation, "--key", pair[0]],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONHASHSEED": "7", "PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert archive.read_bytes() == before


def make_ca(dest: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a signing certificate it issued for a new P-256 key: (ca.pem, cert.pem, key.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def subject(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject(name))
        .issuer_name(subject(name))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(subject(f"{name} CI"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365))
        .add_extension(usage, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    dest.mkdir(parents=True)
    pem = serialization.Encoding.PEM
    (dest / "ca.pem").write_bytes(ca.public_bytes(pem))
    (dest / "cert.pem").write_bytes(leaf.public_bytes(pem))
    (dest / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return dest / "ca.pem", dest / "cert.pem", dest / "key.pem"


def test_certificate_signing(signed_embedding, pair, tmp_path):
    bundle = Path(shutil.copytree(signed_embedding, tmp_path / signed_embedding.name))
    ca, cert, key = make_ca(tmp_path / "ours", "Our CA")
    other_ca, _, _ = make_ca(tmp_path / "theirs", "Their CA")
    result = cli("sign", bundle, "--key", key, "--certificate", cert, "--certificate-chain", ca)
    assert result.exit_code == 0, result.output
    first = (bundle / SIGNATURE).read_bytes()
    again = cli("sign", bundle, "--key", key, "--certificate", cert, "--certificate-chain", ca)
    assert again.exit_code == 0, again.output
    assert (bundle / SIGNATURE).read_bytes() == first  # reproducible as with a bare key
    result = cli("verify", bundle, "--certificate-chain", ca)
    assert result.exit_code == 0 and "signature checked with" in result.output, result.output
    proc = run_bundle(bundle, "verify", "--certificate-chain", ca)
    assert proc.returncode == 0, proc.stderr
    one_line_error(cli("verify", bundle, "--certificate-chain", other_ca), 6, "is not trusted by")
    flip_byte(bundle / "model" / "model.onnx")
    one_line_error(cli("verify", bundle, "--certificate-chain", ca), 6, "Hash mismatch")
    one_line_error(cli("verify", signed_embedding, "--certificate-chain", ca), 6, "signed with a key, not")
    # The certificate must be the key's.
    one_line_error(cli("sign", signed_embedding, "--key", pair[0], "--certificate", cert), 3, "cannot sign")


def test_bench_recording_removes_the_signature_it_invalidates(signed_embedding, pair, tmp_path):
    root = Path(shutil.copytree(signed_embedding, tmp_path / signed_embedding.name))
    result = cli("bench", root, "--no-baseline", "--runs", "1", "--warmup", "0")
    assert result.exit_code == 0, result.output
    assert "the signature signed the old manifest and was removed" in result.output
    assert not (root / SIGNATURE).exists()
    assert cli("verify", root).exit_code == 0
    one_line_error(cli("verify", root, "--public-key", pair[1]), 6, "not signed")


def test_contradictory_signing_options_are_usage_errors(signed_embedding, pair):
    for args in (
        ("verify", signed_embedding, "--public-key", pair[1], "--certificate-chain", pair[1]),
        ("sign", signed_embedding),
        ("sign", signed_embedding, "--certificate", pair[1]),
    ):
        result = cli(*args)
        assert result.exit_code == 2 and "Error:" in result.output, result.output
    result = cli("sign", signed_embedding, "--key", pair[0], "--certificate-chain", pair[1])
    one_line_error(result, 3, "--certificate-chain goes with --certificate")
