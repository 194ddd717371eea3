"""Blockwise weight quantization in onnxruntime's MatMulNBits layout: RTN with a searched clip, or GPTQ.

MatMulNBits stores a [K, N] weight per output column n in blocks of ``block`` along K: codes
``q`` in [0, 2**bits), one float scale and one integer zero point per block, and computes
``(q - zero) * scale``. Two ways to pick the codes:

- ``rtn``: each block's range, shrunk by the clip (from a small grid) that minimises the block's
  squared error weighted by how strongly each input channel is driven (the diagonal of X^T X on
  calibration texts; all ones without them). llama.cpp's k-quants search scales the same way.
- ``gptq`` (Frantar et al. 2022): columns of K are quantized one after another and each one's
  rounding error is pushed onto the columns not yet quantized, through the inverse of the
  calibration Hessian X^T X, so the layer's *output* error is minimised rather than the weights'.
  Block scales are chosen, with the clip search above, from the error-updated weights when the
  column loop reaches each block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Clip factors tried per block: 1.0 keeps the full range; smaller ones trade the outliers'
# error for finer steps everywhere else.
CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


@dataclass(frozen=True)
class Quantized:
    """Codes and block parameters of a [K, N] weight, as MatMulNBits stores them once packed."""

    codes: np.ndarray  # uint8 [N, K_padded], each in [0, 2**bits)
    scales: np.ndarray  # float32 [N, blocks]
    zeros: np.ndarray  # uint8 [N, blocks]
    bits: int
    block: int

    def dequantize(self, k: int) -> np.ndarray:
        """The [K, N] float32 weight these codes stand for."""
        n, padded = self.codes.shape
        codes = self.codes.reshape(n, -1, self.block).astype(np.float32)
        w = (codes - self.zeros[:, :, None]) * self.scales[:, :, None]
        return np.ascontiguousarray(w.reshape(n, padded)[:, :k].T)

    def packed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, scales, zero_points) as MatMulNBits' inputs: B uint8 [N, blocks, block*bits/8]."""
        n, padded = self.codes.shape
        blocks = padded // self.block
        if self.bits == 4:
            data = (self.codes[:, 0::2] | (self.codes[:, 1::2] << 4)).astype(np.uint8)
            z = self.zeros
            if blocks % 2:
                z = np.concatenate([z, np.zeros((n, 1), np.uint8)], axis=1)
            zeros = (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
        else:
            data, zeros = self.codes, self.zeros
        return (
            np.ascontiguousarray(data.reshape(n, blocks, self.block * self.bits // 8)),
            np.ascontiguousarray(self.scales.reshape(-1), dtype=np.float32),
            np.ascontiguousarray(zeros.reshape(-1)),
        )


def _params(
    w: np.ndarray, importance: np.ndarray, bits: int, clips: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row scale and zero point of blocks ``w`` [rows, block]: the clip with least weighted error."""
    maxq = (1 << bits) - 1
    lo, hi = np.minimum(w.min(axis=1), 0.0), np.maximum(w.max(axis=1), 0.0)
    best_err = np.full(w.shape[0], np.inf)
    best_scale = np.ones(w.shape[0], np.float32)
    best_zero = np.zeros(w.shape[0], np.float32)
    for clip in clips:
        scale = (hi - lo) * clip / maxq
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        zero = np.clip(np.round(-lo * clip / scale), 0, maxq)
        q = np.clip(np.round(w / scale[:, None]) + zero[:, None], 0, maxq)
        err = (((q - zero[:, None]) * scale[:, None] - w) ** 2 * importance).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_zero = np.where(better, zero, best_zero)
    return best_scale.astype(np.float32), best_zero.astype(np.float32)


def _pad(weight: np.ndarray, block: int) -> np.ndarray:
    """[K, N] -> [N, K padded to whole blocks] float32 (rows are output columns)."""
    k, n = weight.shape
    padded = -(-k // block) * block
    w = np.zeros((n, padded), np.float32)
    w[:, :k] = weight.T
    return w


def rtn(
    weight: np.ndarray,
    bits: int,
    block: int,
    importance: np.ndarray | None = None,
    clips: tuple[float, ...] = CLIPS,
) -> Quantized:
    """Round-to-nearest, each block's clip searched; ``importance`` [K] weights the error."""
    k = weight.shape[0]
    w = _pad(weight, block)
    n, padded = w.shape
    imp = np.zeros(padded, np.float32)
    imp[:k] = 1.0 if importance is None else np.maximum(importance, 1e-12)
    blocks = w.reshape(n * (padded // block), block)
    imps = np.tile(imp.reshape(-1, block), (n, 1))
    scale, zero = _params(blocks, imps, bits, clips)
    maxq = (1 << bits) - 1
    codes = np.clip(np.round(blocks / scale[:, None]) + zero[:, None], 0, maxq)
    return Quantized(
        codes.reshape(n, padded).astype(np.uint8),
        scale.reshape(n, -1),
        zero.reshape(n, -1).astype(np.uint8),
        bits,
        block,
    )


def gptq(
    weight: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    block: int,
    damp: float = 0.01,
    clips: tuple[float, ...] = CLIPS,
    act_order: bool = False,
) -> Quantized:
    """GPTQ of ``weight`` [K, N] given the calibration Hessian ``hessian`` = X^T X [K, K].

    ``act_order``: the block parameters are fixed first (from the unchanged weights), then the
    columns are quantized from the most to the least driven, so the error of the important ones
    is pushed onto the others rather than the other way round.
    """
    import torch

    threads = torch.get_num_threads()
    # One thread: the column loop is thousands of tiny ops, where a second thread only adds
    # hand-over cost (and, on a busy machine, waits for a core).
    torch.set_num_threads(1)
    try:
        return _gptq(weight, hessian, bits, block, damp, clips, act_order)
    finally:
        torch.set_num_threads(threads)


def _gptq(
    weight: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    block: int,
    damp: float,
    clips: tuple[float, ...],
    act_order: bool,
) -> Quantized:
    import torch

    k = weight.shape[0]
    w = torch.from_numpy(_pad(weight, block))
    n, padded = w.shape
    h = torch.zeros((padded, padded), dtype=torch.float64)
    h[:k, :k] = torch.from_numpy(np.asarray(hessian, dtype=np.float64))
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    importance = torch.diag(h).clone()
    if act_order:
        return _gptq_ordered(w, h, importance, bits, block, damp, clips)
    h += torch.eye(padded, dtype=torch.float64) * damp * torch.mean(torch.diag(h))
    # The upper Cholesky factor of H^-1 gives each column's update row (the GPTQ paper's trick).
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).to(torch.float32)
    maxq = (1 << bits) - 1
    codes = torch.zeros((n, padded), dtype=torch.uint8)
    scales = np.zeros((n, padded // block), np.float32)
    zeros = np.zeros((n, padded // block), np.uint8)
    imp = importance.to(torch.float32).numpy()
    span = max(block, 128 // block * block)  # columns updated lazily together
    for start in range(0, padded, span):
        end = min(start + span, padded)
        w1 = w[:, start:end].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[start:end, start:end]
        scale = zero = torch.zeros(n)
        for i in range(end - start):
            col = start + i
            if col % block == 0:
                group = w1[:, i : i + block].numpy()
                s, z = _params(group, imp[col : col + block], bits, clips)
                scales[:, col // block], zeros[:, col // block] = s, z.astype(np.uint8)
                scale, zero = torch.from_numpy(s), torch.from_numpy(z)
            x = w1[:, i]
            q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
            codes[:, col] = q.to(torch.uint8)
            err = (x - (q - zero) * scale) / h1[i, i]
            w1[:, i:] -= err[:, None] * h1[i, i:][None, :]
            err1[:, i] = err
        w[:, end:] -= err1 @ hinv[start:end, end:]
    return Quantized(codes.numpy(), scales, zeros, bits, block)


def _gptq_ordered(
    w: Any,
    h: Any,
    importance: Any,
    bits: int,
    block: int,
    damp: float,
    clips: tuple[float, ...],
) -> Quantized:
    import torch

    n, padded = w.shape
    maxq = (1 << bits) - 1
    imp = importance.to(torch.float32).numpy()
    fixed = rtn(w.numpy().T, bits, block, imp, clips)
    scales_t = torch.from_numpy(fixed.scales)
    zeros_t = torch.from_numpy(fixed.zeros.astype(np.float32))
    order = torch.argsort(importance, descending=True)
    w = w[:, order].clone()
    h = h[order][:, order]
    h += torch.eye(padded, dtype=torch.float64) * damp * torch.mean(torch.diag(h))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).to(torch.float32)
    groups = order // block
    codes = torch.zeros((n, padded), dtype=torch.uint8)
    span = 128
    for start in range(0, padded, span):
        end = min(start + span, padded)
        w1 = w[:, start:end].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[start:end, start:end]
        for i in range(end - start):
            g = int(groups[start + i])
            scale, zero = scales_t[:, g], zeros_t[:, g]
            x = w1[:, i]
            q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
            codes[:, start + i] = q.to(torch.uint8)
            err = (x - (q - zero) * scale) / h1[i, i]
            w1[:, i:] -= err[:, None] * h1[i, i:][None, :]
            err1[:, i] = err
        w[:, end:] -= err1 @ hinv[start:end, end:]
    unordered = torch.empty_like(codes)
    unordered[:, order] = codes
    return Quantized(unordered.numpy(), fixed.scales, fixed.zeros, bits, block)
