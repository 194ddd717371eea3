"""llama.cpp side of bench_llm.py, run in llama-cpp-python's own venv: one JSON command per line.

Commands: quantize {src, dst, ftype}; load {name, path, threads, logits_all, n_ctx}; generate {name,
ids, n} (greedy: argmax of the last row, as the edgepipe side does); logits {name, ids, out} (saves
.npy); tokenize {path, texts} (a GGUF's own tokenizer); rss {} (this process's peak and current
resident MB).
Every reply is one JSON line on stdout; llama.cpp's own logging goes to stderr.
"""

from __future__ import annotations

import time

import llama_cpp
import numpy as np
from jsonl_worker import serve  # beside this script

FTYPES = {
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
}
models: dict[str, llama_cpp.Llama] = {}


def quantize(src: str, dst: str, ftype: str) -> dict:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    return {"rc": int(rc)}


def load(
    name: str, path: str, threads: int, logits_all: bool = False, n_ctx: int = 512, extra_bufts: bool = True
) -> dict:
    """``extra_bufts`` False: no extra CPU buffer types (AMX, repacked layouts); on this AMX host the
    Granite-MoE shape's quantized GGUFs segfaulted at the first eval with them."""
    default = llama_cpp.llama_model_default_params

    def params() -> llama_cpp.llama_model_params:
        found = default()
        found.use_extra_bufts = extra_bufts
        return found

    llama_cpp.llama_cpp.llama_model_default_params = params  # what Llama() reads
    llama_cpp.llama.llama_cpp.llama_model_default_params = params
    models[name] = llama_cpp.Llama(
        model_path=path,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=n_ctx,
        n_batch=512,
        logits_all=logits_all,
        verbose=False,
    )
    llama_cpp.llama.llama_cpp.llama_model_default_params = default
    llama_cpp.llama_cpp.llama_model_default_params = default
    return {"n_vocab": models[name].n_vocab()}


def last_argmax(llm: llama_cpp.Llama) -> int:
    """Greedy pick from the last evaluated position's logits, read from llama.cpp's context:
    llama-cpp-python >= 0.3 copies them into ``llm.scores`` only with ``logits_all`` (and its
    ``scores`` has n_batch rows then), so reading ``scores`` took the argmax of unwritten memory."""
    row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
    return int(np.argmax(row))


def generate(name: str, ids: list[int], n: int) -> dict:
    llm = models[name]
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    tokens = [last_argmax(llm)]
    first = time.perf_counter()
    while len(tokens) < n:
        llm.eval([tokens[-1]])
        tokens.append(last_argmax(llm))
    done = time.perf_counter()
    return {
        "ttft_ms": (first - start) * 1e3,
        "decode_tps": (n - 1) / (done - first),
        "tokens": tokens,
    }


def logits(name: str, ids: list[int], out: str) -> dict:
    llm = models[name]
    llm.reset()
    llm.eval(ids)
    np.save(out, np.asarray(llm.scores[: len(ids)], dtype=np.float32))
    return {"rows": len(ids)}


def tokenize(path: str, texts: list[str]) -> dict:
    """llama.cpp's own ids for ``texts`` (no BOS, specials as text), from a GGUF's vocabulary."""
    vocab = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    return {"ids": [vocab.tokenize(t.encode(), add_bos=False, special=False) for t in texts]}


def main() -> None:
    serve(
        {
            "quantize": quantize,
            "load": load,
            "generate": generate,
            "logits": logits,
            "tokenize": tokenize,
        }
    )


if __name__ == "__main__":
    main()
