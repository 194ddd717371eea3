"""GGUF files as a model source: check one, then convert it to a Hugging Face directory, cached.

The weights are dequantized to float32 by transformers' own GGUF loader. The tokenizer is rebuilt
here from the file's ``tokenizer.ggml.*`` fields: transformers 4.57's GGUF tokenizer is wrong for a
byte-level BPE ("gpt2") vocabulary under the llama architecture (its eos is read from the bos field,
a BOS is forced onto every input whatever ``add_bos_token`` says, its decoder is sentencepiece-style).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import StageCache, cache_key
from ..catalog.families import family
from ..errors import ModelError
from ..runtime.tasks import Task
from .model import ModelSource, slug

MAGIC = b"GGUF"
VERSIONS = (2, 3)
ARCHITECTURES = ("llama",)
VOCABULARIES = ("gpt2",)
# llama.cpp pre-tokenizers (tokenizer.ggml.pre) that Hugging Face's byte-level pre-tokenizer
# reproduces exactly -> whether digits are split one by one before GPT-2's regex. In llama.cpp's
# llama-vocab.cpp, "gpt-2" is GPT-2's regex alone; "smollm", "starcoder" and "refact" put "\p{N}"
# before that same regex.
PRE_TOKENIZERS: dict[str, bool] = {
    "gpt-2": False,
    "smollm": True,
    "starcoder": True,
    "refact": True,
}
# gguf's token types (llama.cpp's llama_token_type).
CONTROL, USER_DEFINED = 3, 4
UNQUANTIZED = ("F32", "F16", "BF16")
CACHE_STAGE = "gguf"
# Bump when the conversion's output changes: it is part of the cache key.
CONVERTER_VERSION = 1
_SAMPLE = "Hello world! The year 2024 had 366 days; naïve café, 東京.\ndef f(x):\n    return x**2"


@dataclass(frozen=True)
class GGUFInfo:
    """What edgepipe reads from a checked GGUF file."""

    path: Path
    architecture: str
    quantization: str  # general.file_type's name ("Q4_1"), else the commonest tensor type
    tensor_types: dict[str, int]
    fields: dict[str, Any] = field(repr=False)

    @property
    def quantized(self) -> bool:
        return any(t not in UNQUANTIZED for t in self.tensor_types)

    def describe(self) -> dict[str, Any]:
        return {
            "format": "gguf",
            "quantization": self.quantization,
            "tensor_types": self.tensor_types,
        }


def is_gguf(model: str) -> bool:
    """Whether ``model`` names a file to read as GGUF: a ``.gguf`` name, or the GGUF magic."""
    path = Path(model).expanduser()
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


@functools.lru_cache(maxsize=4)
def _read(path: Path, size: int, mtime_ns: int) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's metadata as Python values and its tensor type counts; ModelError if unreadable.
    Cached per path, size and mtime: the CLI's warning and the build read the same file."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != MAGIC:
        raise ModelError(
            f"{path}: not a GGUF file (it does not start with 'GGUF'); pass a llama.cpp .gguf "
            "model or a Hugging Face model directory"
        )
    if len(head) < 8:
        raise ModelError(f"{path}: truncated GGUF file ({size} bytes); re-download it")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in VERSIONS:
        raise ModelError(
            f"{path}: GGUF version {version} is not supported (supported: "
            f"{', '.join(map(str, VERSIONS))}); re-convert it with a current llama.cpp"
        )
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        values = {key: f.contents() for key, f in reader.fields.items()}
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
        types: dict[str, int] = {}
        for tensor in reader.tensors:
            types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    except Exception as exc:  # gguf raises IndexError/ValueError/KeyError on a cut or bad file
        raise ModelError(
            f"{path}: truncated or corrupt GGUF file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); re-download it"
        ) from None
    if end > size:
        raise ModelError(
            f"{path}: GGUF data is {size} bytes, its tensors need {end}; the file is truncated, re-download it"
        )
    if not reader.tensors:
        raise ModelError(f"{path}: GGUF file holds no tensors; it is not a model")
    return values, dict(sorted(types.items()))


def inspect(path: Path) -> GGUFInfo:
    """Check ``path`` is a GGUF edgepipe can convert (llama, byte-level BPE, a known pre-tokenizer)."""
    stat = path.stat()
    values, tensor_types = _read(path, stat.st_size, stat.st_mtime_ns)
    arch = values.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelError(
            f"{path}: GGUF architecture '{arch or '?'}' is not supported; supported: "
            f"{', '.join(ARCHITECTURES)} (or pass a Hugging Face model directory)"
        )
    vocab = values.get("tokenizer.ggml.model")
    if vocab not in VOCABULARIES:
        raise ModelError(
            f"{path}: GGUF vocabulary '{vocab or '?'}' is not supported; supported: "
            f"{', '.join(VOCABULARIES)} (byte-level BPE)"
        )
    pre = values.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZERS:
        raise ModelError(f"{path}: GGUF pre-tokenizer '{pre}' is not supported; supported: {', '.join(PRE_TOKENIZERS)}")
    tokens = values.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ModelError(f"{path}: GGUF file has no tokenizer.ggml.tokens; it cannot be tokenized")
    token_types = values.get("tokenizer.ggml.token_type")
    if token_types is not None and len(token_types) != len(tokens):
        raise ModelError(
            f"{path}: GGUF has {len(token_types)} token types for {len(tokens)} tokens; the file is corrupt"
        )
    if len(set(tokens)) != len(tokens):
        raise ModelError(f"{path}: GGUF vocabulary repeats a token; it cannot be rebuilt exactly")
    for key in ("bos", "eos", "unknown", "padding"):
        tid = values.get(f"tokenizer.ggml.{key}_token_id")
        if tid is not None and not 0 <= tid < len(tokens):
            raise ModelError(f"{path}: tokenizer.ggml.{key}_token_id {tid} is not in the vocabulary")
    file_type = values.get("general.file_type")
    commonest = max(tensor_types, key=lambda t: tensor_types[t])
    quantization = _file_type_name(file_type) or commonest
    return GGUFInfo(path, str(arch), quantization, tensor_types, values)


def _file_type_name(file_type: Any) -> str | None:
    from gguf import LlamaFileType

    try:
        return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        return None


def requantize_warning(model: str) -> str | None:
    """One line for the user when ``model`` is a GGUF stored quantized; None otherwise."""
    if not is_gguf(model):
        return None
    try:
        info = inspect(Path(model).expanduser())
    except ModelError:
        return None  # the build itself reports it
    if not info.quantized:
        return None
    return (
        f"{info.path.name} is stored as {info.quantization}; quantizing it again compounds the "
        "error, and the accuracy guard compares with its dequantized weights, not the original "
        "model: build from the original weights when you have them"
    )


def build_tokenizer(info: GGUFInfo) -> Any:
    """A byte-level BPE fast tokenizer with the GGUF's ids, specials, BOS/EOS and chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    values = info.fields
    tokens: list[str] = values["tokenizer.ggml.tokens"]
    types: list[int] = values.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in values.get("tokenizer.ggml.merges") or []]

    def token(key: str) -> str | None:
        tid = values.get(f"tokenizer.ggml.{key}_token_id")
        return None if tid is None else tokens[tid]

    try:
        bpe = models.BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=merges,
            unk_token=token("unknown"),
            fuse_unk=False,
            byte_fallback=False,
        )
    except Exception as exc:
        raise ModelError(f"{info.path}: the GGUF's merges do not fit its tokens ({exc}); the file is corrupt") from None
    tok = Tokenizer(bpe)
    digits = PRE_TOKENIZERS[values.get("tokenizer.ggml.pre", "gpt-2")]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        ([pre_tokenizers.Digits(individual_digits=True)] if digits else [])
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types, strict=True) if k == CONTROL]
    )
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == USER_DEFINED
        ]
    )
    bos, eos = token("bos"), token("eos")
    add_bos = bool(values.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(values.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        first, last = (f"{bos} " if add_bos else ""), (f" {eos}" if add_eos else "")
        used = [(t, tokens.index(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on and t]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{first}$A{last}",
            pair=f"{first}$A{last} $B:1{last}",
            special_tokens=list(dict.fromkeys(used)),
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    context = values.get(f"{info.architecture}.context_length")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=token("unknown"),
        pad_token=token("padding"),
        clean_up_tokenization_spaces=False,
        model_max_length=int(context) if context else 2048,
        model_input_names=["input_ids", "attention_mask"],
    )
    template = values.get("tokenizer.chat_template")
    if isinstance(template, str) and template:
        fast.chat_template = template
    ids = fast(_SAMPLE, add_special_tokens=False)["input_ids"]
    if fast.decode(ids) != _SAMPLE:
        raise ModelError(
            f"{info.path}: the rebuilt tokenizer does not round-trip text; the GGUF's byte-level "
            "vocabulary is incomplete"
        )
    return fast


def convert(info: GGUFInfo, dest: Path) -> None:
    """Write the Hugging Face directory of ``info`` (float32 safetensors, tokenizer) to ``dest``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    tokenizer = build_tokenizer(info)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its per-tensor progress and GGUF notices
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(
                str(info.path.parent), gguf_file=info.path.name, local_files_only=True
            )
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"{info.path}: transformers cannot load this GGUF's weights ({first}); convert the "
            "original model to a Hugging Face directory and pass that"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    # The special token ids of the GGUF itself, not transformers' reading of them.
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    model.eval()
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def converted(info: GGUFInfo, digest: str, cache: StageCache) -> Path:
    """The Hugging Face directory of ``info`` from the cache, converting it first on a miss."""
    import transformers

    key = cache_key(
        CACHE_STAGE,
        {"converter": CONVERTER_VERSION},
        {"gguf": digest},
        {"transformers": transformers.__version__},
    )
    if cache.verified(CACHE_STAGE, key).record is not None:
        return cache.entry(CACHE_STAGE, key)
    from ..runtime.integrity import sha256_file

    with tempfile.TemporaryDirectory(prefix="edgepipe-gguf-") as tmp:
        work = Path(tmp)
        convert(info, work)
        outputs = {p.relative_to(work).as_posix(): sha256_file(p) for p in sorted(work.rglob("*")) if p.is_file()}
        record = {"gguf": f"sha256:{digest}", **info.describe(), "outputs": outputs}
        cache.put(CACHE_STAGE, key, work, record)
    return cache.entry(CACHE_STAGE, key)


def source(path: Path, name: str | None, task: Task | None) -> ModelSource:
    """The ModelSource of a GGUF file: checked, converted once per file content into the cache."""
    from ..cache import default_dir
    from ..runtime.integrity import sha256_file
    from . import directory

    info = inspect(path)
    digest = sha256_file(path)
    root = converted(info, digest, StageCache(default_dir()))
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    directory.check_weights(root, allow_pickle=False)
    directory.check_tokenizer(root, config)
    model_type = str(config.get("model_type", ""))
    return ModelSource(
        path=root,
        name=slug(name or path.stem),
        kind="gguf",
        model_type=model_type,
        task_kind=directory.model_task(config, family(model_type), task, str(path)),
        digest=digest,
        ref=path,
        origin=info.describe(),
        licence_fields={k: str(v) for k, v in info.fields.items() if k.startswith("general.license")},
    )
