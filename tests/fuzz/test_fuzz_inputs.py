"""Property-based fuzzing of what edgepipe parses from users and devices: never a crash.

`make test` runs a few hundred examples; `make fuzz` runs FUZZ_EXAMPLES (default 20000) per target.
Each property: the input is accepted, or refused with edgepipe's own error, never anything else.
"""

import contextlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepipe.catalog.config import Profile, Target, load_yaml_model
from edgepipe.errors import ConfigError, VerifyError
from edgepipe.runtime import integrity
from edgepipe.runtime.cli import InputError, _decode_lines
from edgepipe.runtime.serve import RequestError, texts_from
from edgepipe.trust.verify import extract_archive

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


def mutate(data: object, path: list[str], value: object) -> object:
    """``data`` with the key at ``path`` (as far as it exists) set to ``value``."""
    if not path or not isinstance(data, dict):
        return value
    key = path[0] if path[0] in data else path[0] + "_x"
    return {**data, key: mutate(data.get(key), path[1:], value)}


def load(text: str, model) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_yaml_model(path, model)
        except ConfigError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)


@fuzz
@given(st.text(max_size=300))
def test_any_text_as_target_or_profile(text):
    load(text, Target)
    load(text, Profile)


@fuzz
@given(
    st.lists(
        st.sampled_from(["platform", "cpu", "runtime", "budgets", "cores", "isa", "onnxruntime", "name", "arch"]),
        max_size=3,
    ),
    documents,
)
def test_a_real_target_with_one_field_damaged(path, value):
    good = yaml.safe_load((ROOT / "targets" / "rpi5.yaml").read_text())
    load(yaml.safe_dump(mutate(good, path, value)), Target)


@fuzz
@given(documents)
def test_any_manifest_is_read_or_refused(document):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "manifest.json").write_text(json.dumps(document))
        try:
            problems = integrity.verify_dir(Path(tmp))
        except ValueError as exc:
            assert "manifest" in str(exc)
        else:
            assert isinstance(problems, list)


@fuzz
@given(st.binary(max_size=2000))
def test_any_bytes_as_an_archive(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.tar.gz"
        path.write_bytes(data)
        with contextlib.suppress(VerifyError):
            extract_archive(path, Path(tmp) / "out")


KINDS = [
    tarfile.REGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.CHRTYPE,
    tarfile.FIFOTYPE,
]


@fuzz
@given(st.lists(st.tuples(st.text(max_size=30), st.sampled_from(KINDS)), min_size=1, max_size=6))
def test_any_tar_entries_stay_inside(entries):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "x.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, kind in entries:
                info = tarfile.TarInfo(name or "x")
                info.type = kind
                info.linkname = "../../etc/passwd"
                tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        dest = root / "dest" / "inner"
        dest.mkdir(parents=True)
        with contextlib.suppress(VerifyError):
            extract_archive(path, dest)
        outside = [p for p in root.rglob("*") if not p.is_relative_to(dest) and p != path]
        assert all(p in (root / "dest", dest) for p in outside)
        assert not [p for p in dest.rglob("*") if p.is_symlink()]


@fuzz
@given(st.binary(max_size=500))
def test_any_stdin_bytes_are_texts_or_one_line_error(data):
    try:
        lines = list(_decode_lines(data, "stdin"))
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(isinstance(line, str) and "\x00" not in line for line in lines)


@fuzz
@given(documents)
def test_any_json_body_is_texts_or_a_400(payload):
    try:
        texts = texts_from(payload, max_texts=64)
    except RequestError as exc:
        assert 400 <= int(exc.status) < 500
    else:
        assert texts and all(isinstance(t, str) for t in texts)


# Structured JSON for `serve`'s body parser: documents wrapped in nesting up to 100,000 levels of
# arrays and objects, around numbers, constants, duplicate keys and surrogate escapes that the
# standard decoder takes or crashes on; sometimes cut short.
ATOMS = st.one_of(
    documents.map(json.dumps),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.sampled_from(
        [
            "1e999",
            "-1.5e400",
            "1e-99999",
            "NaN",
            "-Infinity",
            '"\\ud800"',
            '"\\udc00\\ud800x"',
            '"\\ud83d\\ude00"',
            '{"a": 1, "a": 2}',
            '{"\\ud800": 1}',
            '"\\u0000"',
            "[]",
            "{}",
        ]
    ),
)


@st.composite
def nested_json(draw) -> bytes:
    depth = draw(st.integers(0, 200) | st.sampled_from([63, 64, 65, 10_000, 100_000]))
    kinds = draw(st.lists(st.sampled_from(["[", '{"k": ']), min_size=1, max_size=3))
    opening = "".join(kinds[i % len(kinds)] for i in range(depth))
    closing = "".join("]" if kinds[i % len(kinds)] == "[" else "}" for i in reversed(range(depth)))
    text = (opening + draw(ATOMS) + closing).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@fuzz
@given(nested_json())
def test_any_structured_json_body_is_a_document_or_a_400(body):
    from edgepipe.runtime import openai_api
    from edgepipe.runtime.http import json_body as http_json

    try:
        value = http_json.loads(body)
    except http_json.BodyError as exc:
        assert "\n" not in str(exc)
        return
    assert _depth(value) <= http_json.MAX_DEPTH
    assert value == json.loads(body)  # what it accepts, it reads as the standard decoder does
    for check in (
        lambda: texts_from(value, max_texts=64),
        lambda: openai_api.embedding_inputs(value, 64),
        lambda: openai_api.messages_from(value if isinstance(value, dict) else {}),
    ):
        try:
            check()
        except RequestError as exc:
            assert 400 <= int(exc.status) < 500
