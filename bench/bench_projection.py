"""Decoder projection at gpt2-small shapes (d_sae 24,576, d_model 768, d_vocab 50,257), random weights.

References timed in the same run: (a) one plain fp32 matmul of the same size, the floor for an exact fp32
answer; (b) the study authors' approach: materialise the full product, then torch.topk per feature in a loop.
Targets (issue #4): ours ≤ 1.0× (a) with ≤ 1 GB extra memory; bf16 + exact re-scoring ≤ 0.6× (a).
"""

import resource
import time

import numpy as np
import torch

from core.projection import decoder_projection_topk

D_SAE, D_MODEL, D_VOCAB, K = 24_576, 768, 50_257, 10


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _native_bf16() -> bool:
    """bf16 matmuls pay only with hardware support: CUDA, or CPUs with AVX512-BF16/AMX (not AVX2)."""
    return torch.cuda.is_available() or torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")


def _authors(W_dec, W_U):
    full = W_dec @ W_U  # 4.9 GB
    return [torch.topk(full[i], K).indices for i in range(full.shape[0])]


def run() -> list[dict]:
    torch.manual_seed(0)
    W_dec = torch.randn(D_SAE, D_MODEL) / D_MODEL**0.5
    W_U = torch.randn(D_MODEL, D_VOCAB) * 0.1
    _, floor = _timed(lambda: (W_dec @ W_U).shape)  # the 4.9 GB product is freed at once
    rows = [{"name": "(a) plain fp32 matmul W_dec @ W_U", "seconds": floor, "extra_GB": D_SAE * D_VOCAB * 4 / 1e9}]
    fp32, seconds = _timed(lambda: decoder_projection_topk(W_dec, W_U, k=K, precision="fp32"))
    rows.append({"name": "ours fp32, chunked running top-k", "seconds": seconds, "reference": "(a)",
                 "ratio": seconds / floor, "extra_GB": 1024 * D_VOCAB * 4 * 2 / 1e9})
    if _native_bf16():
        bf16, seconds = _timed(lambda: decoder_projection_topk(W_dec, W_U, k=K, precision="bf16"))
        rows.append({"name": "ours bf16 + exact fp32 re-score", "seconds": seconds, "reference": "(a)",
                     "ratio": seconds / floor, "extra_GB": 1024 * D_VOCAB * 6 / 1e9,
                     "equals_fp32": bool(np.array_equal(bf16.top_ids, fp32.top_ids)
                                         and np.array_equal(bf16.bottom_ids, fp32.bottom_ids))})
    else:
        rows.append({"name": "ours bf16: skipped, no native bf16 (CPU " + torch.backends.cpu.get_cpu_capability()
                     + ")", "seconds": 0.0})
    authors, seconds = _timed(lambda: _authors(W_dec, W_U))
    rows.append({"name": "(b) authors: full product + topk loop", "seconds": seconds, "reference": "(a)",
                 "ratio": seconds / floor, "extra_GB": D_SAE * D_VOCAB * 4 / 1e9,
                 "equals_ours": bool(np.array_equal(torch.stack(authors).numpy(), fp32.top_ids))})
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    rows.append({"name": f"process peak RSS {peak_gb:.1f} GB (the references hold 4.9 GB)", "seconds": 0.0})
    return rows
