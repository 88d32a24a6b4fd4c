"""Decoder projection at gpt2-small shapes (d_sae 24,576, d_model 768, d_vocab 50,257), random weights.

References timed in the same run: (a) one plain fp32 matmul of the same size, the floor for an exact fp32
answer; (b) the study authors' approach: materialise the full product, then torch.topk per feature in a loop.
Targets (issue #4): ours ≤ 1.0× (a) with ≤ 1 GB extra memory; bf16 + exact re-scoring ≤ 0.6× (a). Ours' extra
memory is measured (peak RSS over the call); the references' is the size of the product they hold.
"""

import resource
import sys
import time

import numpy as np
import torch

from core.projection import decoder_projection_topk

D_SAE, D_MODEL, D_VOCAB, K = 24_576, 768, 50_257, 10


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _status_bytes(key: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))


def _timed_extra(fn):
    """(fn(), seconds, peak RSS above the RSS before the call in GB): the memory is measured, Linux only (else nan)."""
    if not sys.platform.startswith("linux"):
        return *_timed(fn), float("nan")
    before = _status_bytes("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    out, seconds = _timed(fn)
    return out, seconds, (_status_bytes("VmHWM:") - before) / 1e9


def _native_bf16() -> bool:
    """bf16 matmuls pay only with hardware support: CUDA, or CPUs with AVX512-BF16/AMX (not AVX2)."""
    return torch.cuda.is_available() or torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")


def _authors(W_dec, W_U):
    full = W_dec @ W_U  # 4.9 GB
    return [torch.topk(full[i], K) for i in range(full.shape[0])]


def _tie_ordered_ids(topk: list) -> np.ndarray:
    """The authors' ids re-ordered by (value descending, id): torch.topk leaves equal values in any order, and
    random gpt2-small-sized weights do give a few exact fp32 ties in the top 10."""
    values, ids = torch.stack([t.values for t in topk]).numpy(), torch.stack([t.indices for t in topk]).numpy()
    return np.take_along_axis(ids, np.lexsort((ids, -values), axis=-1), axis=-1)


def run() -> list[dict]:
    torch.manual_seed(0)
    W_dec = torch.randn(D_SAE, D_MODEL) / D_MODEL**0.5
    W_U = torch.randn(D_MODEL, D_VOCAB) * 0.1
    _, floor = _timed(lambda: (W_dec @ W_U).shape)  # the 4.9 GB product is freed at once
    rows = [{"name": "(a) plain fp32 matmul W_dec @ W_U", "seconds": floor, "extra_GB": D_SAE * D_VOCAB * 4 / 1e9}]
    fp32, seconds, extra = _timed_extra(lambda: decoder_projection_topk(W_dec, W_U, k=K, precision="fp32"))
    rows.append({"name": "ours fp32, vocab blocks + group top-k", "seconds": seconds, "reference": "(a)",
                 "ratio": seconds / floor, "extra_GB": extra})
    if _native_bf16():
        bf16, seconds, extra = _timed_extra(lambda: decoder_projection_topk(W_dec, W_U, k=K, precision="bf16"))
        rows.append({"name": "ours bf16 + exact fp32 re-score", "seconds": seconds, "reference": "(a)",
                     "ratio": seconds / floor, "extra_GB": extra,
                     "equals_fp32": bool(np.array_equal(bf16.top_ids, fp32.top_ids)
                                         and np.array_equal(bf16.bottom_ids, fp32.bottom_ids))})
    else:
        rows.append({"name": "ours bf16: skipped, no native bf16 (CPU " + torch.backends.cpu.get_cpu_capability()
                     + ")", "seconds": 0.0})
    authors, seconds = _timed(lambda: _authors(W_dec, W_U))
    rows.append({"name": "(b) authors: full product + topk loop", "seconds": seconds, "reference": "(a)",
                 "ratio": seconds / floor, "extra_GB": D_SAE * D_VOCAB * 4 / 1e9,
                 "equals_ours": bool(np.array_equal(_tie_ordered_ids(authors), fp32.top_ids))})
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    rows.append({"name": f"process peak RSS {peak_gb:.1f} GB (the references hold 4.9 GB)", "seconds": 0.0})
    return rows
