"""Feature matching at the study's shapes: 24,576 (A) × 12,288 (B) features, density 1e-3, 1M tokens.

Synthetic sparse activations: A fires at random (log-normal values); half of B's features are A features under a
random permutation, with 10% of firings dropped and log-normal noise on the rest (r ≈ 0.9, so they persist),
the other half fire independently (they emerge). Batches of 4,096 tokens come as torch sparse tensors, the way a
GPU encode would hand over its non-zeros; the scan of dense SAE outputs for their non-zeros is timed apart.

Reference timed in the same run: the dense approach (materialise tokens × d_sae, standardise, one fp32 matmul
Zaᵀ Zb / n, as torch.corrcoef does) on a 10k-token slice, scaled linearly to 1M tokens (its matmul is linear in
tokens). Each side runs in its own subprocess so that its peak memory is its own: ru_maxrss (peak resident set
size of that process, torch and Python included) read with resource.getrusage at its end. CPU seconds are
reported beside wall seconds: this 2-core machine is shared, so wall time varies run to run.
Target (issue #7): ≤ 5 minutes and ≤ 4 GB for 1M tokens on this CPU.
"""

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

D_A, D_B, DENSITY, N_TOKENS, BATCH, SLICE = 24_576, 12_288, 1e-3, 1_000_000, 4_096, 10_000
ROOT = Path(__file__).resolve().parent.parent


def _structure(seed: int = 0) -> torch.Tensor:
    """perm [D_B // 2]: B feature j < D_B // 2 is A feature perm[j]."""
    return torch.randperm(D_A, generator=torch.Generator().manual_seed(seed))[:D_B // 2]


def synthetic_batch(n: int, perm: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse COO activations A [n, D_A] and B [n, D_B] on the same n tokens."""
    nnz = int(n * D_A * DENSITY)
    token = torch.randint(0, n, (nnz,), generator=generator)
    feature = torch.randint(0, D_A, (nnz,), generator=generator)
    value = torch.exp(0.5 * torch.randn(nnz, generator=generator))
    a = torch.sparse_coo_tensor(torch.stack([token, feature]), value, (n, D_A), check_invariants=False).coalesce()
    token, feature = a.indices()
    inverse = torch.full((D_A,), -1, dtype=torch.long)
    inverse[perm] = torch.arange(perm.numel())
    kept = (inverse[feature] >= 0) & (torch.rand(feature.numel(), generator=generator) > 0.1)
    noisy = a.values()[kept] * torch.exp(0.3 * torch.randn(int(kept.sum()), generator=generator))
    n_new = int(n * (D_B - perm.numel()) * DENSITY)
    new_token = torch.randint(0, n, (n_new,), generator=generator)
    new_feature = perm.numel() + torch.randint(0, D_B - perm.numel(), (n_new,), generator=generator)
    b_index = torch.cat([torch.stack([token[kept], inverse[feature[kept]]]), torch.stack([new_token, new_feature])], 1)
    b_value = torch.cat([noisy, torch.exp(0.5 * torch.randn(n_new, generator=generator))])
    return a, torch.sparse_coo_tensor(b_index, b_value, (n, D_B), check_invariants=False).coalesce()


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def measure_ours() -> dict:
    from core.matching import CoactivationAccumulator, match_features

    perm, generator = _structure(), torch.Generator().manual_seed(1)
    base_gb = _peak_gb()
    acc = CoactivationAccumulator(D_A, D_B)
    accumulate = generate = cpu = 0.0
    for start in range(0, N_TOKENS, BATCH):
        tick = time.perf_counter()
        a, b = synthetic_batch(min(BATCH, N_TOKENS - start), perm, generator)
        tock, cpu_tock = time.perf_counter(), time.process_time()
        acc.update(a, b)
        generate, accumulate = generate + tock - tick, accumulate + time.perf_counter() - tock
        cpu += time.process_time() - cpu_tock
    tick, cpu_tick = time.perf_counter(), time.process_time()
    matches = match_features(acc.result())
    match = time.perf_counter() - tick
    cpu += time.process_time() - cpu_tick
    return {"accumulate_seconds": accumulate, "match_seconds": match, "generate_seconds": generate, "cpu_seconds": cpu,
            "peak_GB": _peak_gb(), "import_GB": base_gb, "counts": matches.counts(),
            "recovered": float((matches.b_match[:perm.numel()] == perm.numpy()).mean())}


def measure_dense() -> dict:
    from core.matching import CoactivationAccumulator, match_features

    perm, generator = _structure(), torch.Generator().manual_seed(1)
    batches = [synthetic_batch(min(BATCH, SLICE - s), perm, generator) for s in range(0, SLICE, BATCH)]
    dense_a = torch.cat([a.to_dense() for a, _ in batches])  # [SLICE, D_A] fp32
    dense_b = torch.cat([b.to_dense() for _, b in batches])
    tick, cpu_tick = time.perf_counter(), time.process_time()
    for dense in (dense_a, dense_b):
        dense.sub_(dense.mean(0)).div_(dense.std(0, correction=0))  # in place: no second copy; 0/0 → NaN
    corr = dense_a.T @ dense_b / SLICE  # [D_A, D_B]
    b_best = torch.nan_to_num(corr, nan=-torch.inf).max(0)
    seconds, cpu, peak = time.perf_counter() - tick, time.process_time() - cpu_tick, _peak_gb()
    del dense_a, dense_b, corr  # ours below needs its own 2.4 GB
    acc = CoactivationAccumulator(D_A, D_B)
    for a, b in batches:
        acc.update(a, b)
    ours = match_features(acc.result())
    defined = torch.isfinite(b_best.values).numpy()
    return {"slice_seconds": seconds, "slice_cpu_seconds": cpu, "peak_GB": peak,
            "max_abs_diff": float(abs(ours.b_corr[defined] - b_best.values.numpy()[defined]).max()),
            "same_best_match": float((ours.b_match[defined] == b_best.indices.numpy()[defined]).mean())}


def measure_scan() -> dict:
    """Seconds to find the non-zeros of dense [BATCH, D_A] and [BATCH, D_B] SAE outputs, per 1M tokens."""
    from core.matching import _sparse_parts

    a, b = synthetic_batch(BATCH, _structure(), torch.Generator().manual_seed(1))
    a, b = a.to_dense(), b.to_dense()
    times = []
    for _ in range(3):  # the least of three: the machine is shared
        tick = time.perf_counter()
        for dense in (a, b):
            _sparse_parts(dense, torch.device("cpu"), torch.float64)
        times.append(time.perf_counter() - tick)
    return {"seconds": min(times) * N_TOKENS / BATCH}


def _in_subprocess(name: str) -> dict:
    code = f"import json; from bench.bench_matching import {name}; print(json.dumps({name}()))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run() -> list[dict]:
    dense = _in_subprocess("measure_dense")
    dense_seconds = dense["slice_seconds"] * N_TOKENS / SLICE
    ours = _in_subprocess("measure_ours")
    ours_seconds = ours["accumulate_seconds"] + ours["match_seconds"]
    scan = _in_subprocess("measure_scan")
    return [
        {"name": f"dense corrcoef, {SLICE // 1000}k-token slice ×{N_TOKENS // SLICE}", "seconds": dense_seconds,
         "slice_seconds": dense["slice_seconds"], "cpu_seconds": dense["slice_cpu_seconds"] * N_TOKENS / SLICE,
         "peak_GB_slice": dense["peak_GB"],
         "ours_max_abs_diff_on_slice": dense["max_abs_diff"],
         "ours_same_best_match_on_slice": dense["same_best_match"]},
        {"name": "ours sparse co-activations, 1M tokens", "seconds": ours_seconds, "reference": "dense",
         "ratio": ours_seconds / dense_seconds, "cpu_seconds": ours["cpu_seconds"],
         "accumulate_seconds": ours["accumulate_seconds"],
         "match_seconds": ours["match_seconds"], "peak_GB": ours["peak_GB"], "import_GB": ours["import_GB"],
         "target_seconds": 300.0, "target_GB": 4.0, "counts": ours["counts"], "recovered": ours["recovered"],
         "synthetic_data_seconds_not_counted": ours["generate_seconds"]},
        {"name": "non-zero scan of dense SAE outputs, per 1M", "seconds": scan["seconds"]},
    ]
