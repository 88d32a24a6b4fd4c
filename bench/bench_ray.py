"""The activation pass of the embedded demo's base arm over a fixed corpus (the first N_TOKENS of its held-out
text), run by the local executor and by the Ray executor with 1 and 2 workers (one CPU thread each), from the
same run: speed-up = local seconds / Ray seconds. Ray's seconds include starting its workers (each loads the
arm), saving every shard's accumulator and merging them; the workers' own per-shard seconds give the
throughput the estimate in README ("Running on a Ray cluster") starts from. The pair stages' passes
(similarity, transfer, matching) are sharded over workers the same way, each worker holding both arms; this
benchmark times the arm pass only. Needs the demo (`make demo`, or
a copy in data/demo) and Ray (`make install-ray`); without them the benchmark says so and times nothing.
"""

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_inspect import _machine
from core.config import load_config
from core.loading import load_arm, weights_fingerprint
from precompute import stages
from precompute.executors import LocalExecutor
from precompute.inputs import StudyInputs
from precompute.run import _medical_words

CONFIG, N_TOKENS, SHARD_ROWS = "configs/demo.toml", 32_768, 32  # 256 rows of 128: 8 shards of 2 batches
GPT2_HOOK, GPT2_D_SAE, GPT2_SHARD_ROWS, L0_TARGET = "blocks.8.hook_resid_pre", 24_576, 32, 60
logger = logging.getLogger(__name__)


def _timed_local(stage, inputs, loaded) -> float:
    start = time.perf_counter()
    LocalExecutor().run_stage(stage, None, inputs, loaded, "local")
    return time.perf_counter() - start


def _timed_ray(ray, workers: int, stage, inputs, loaded, arm, fingerprints) -> dict:
    from precompute.ray_executor import RayExecutor

    executor = RayExecutor(workers=workers, shard_rows=SHARD_ROWS)
    key = f"bench-{workers}-{time.time_ns()}"  # never a saved shard from an earlier run
    start = time.perf_counter()
    with executor.arm(arm, fingerprints, "cpu"):
        ray.get([actor.ready.remote() for actor in executor._workers()])
        started = time.perf_counter()
        executor.run_stage(stage, None, inputs, loaded, key)
        seconds = time.perf_counter() - start
    executor.stage_written(inputs.config.features_db, loaded.name, stage, key)
    rows, shard_seconds = map(sum, zip(*executor.shard_seconds))
    row_tokens = inputs.corpus_rows(loaded).shape[1] - 1
    return {"seconds": seconds, "startup_seconds": started - start,
            "worker_tokens_per_second": rows * row_tokens / shard_seconds}


def gpt2_small_shard() -> dict:
    """One shard at gpt2-small's shape on one thread: GPT-2 small (random weights, context 128) to
    blocks.8.hook_resid_pre and a 24,576-feature SAE whose biases leave ~L0_TARGET features firing per token;
    then saving, loading and merging that shard's accumulator (the driver's work per shard)."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from core.activations import activation_pass
    from core.config import ActivationsConfig
    from core.hook_reads import activations_at_hook

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072,
                                                      d_vocab=50_257, n_ctx=1024, act_fn="gelu_new",
                                                      normalization_type="LN")).eval()
    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=GPT2_D_SAE))
    rows = torch.randint(0, 50_257, (GPT2_SHARD_ROWS, 128))
    with torch.no_grad():
        sae.W_enc.normal_(0, 768 ** -0.5)
        sae.W_dec.copy_(sae.W_enc.T)
        pre = activations_at_hook(model, GPT2_HOOK, rows[:16]).reshape(-1, 768) @ sae.W_enc
        sae.b_enc.copy_(-pre.quantile(1 - L0_TARGET / GPT2_D_SAE, dim=0))  # each feature fires on ~L0/d_sae
    config = ActivationsConfig()
    medical = torch.zeros(50_257, dtype=torch.bool)
    start = time.perf_counter()
    accumulator = activation_pass(model, sae, GPT2_HOOK, rows, torch.arange(GPT2_SHARD_ROWS), config, medical)
    shard_seconds = time.perf_counter() - start
    l0 = float(accumulator.n_fired.sum()) / accumulator.n_tokens
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shard.pt"
        start = time.perf_counter()
        torch.save(accumulator, path)
        other = torch.load(path, weights_only=False)
        accumulator.merge(other)
        driver_seconds = time.perf_counter() - start
        shard_mb = path.stat().st_size / 1e6
    return {"tokens_per_second": GPT2_SHARD_ROWS * 127 / shard_seconds, "l0": l0,
            "driver_seconds_per_shard": driver_seconds, "shard_mb": shard_mb}


def run() -> list[dict]:
    try:
        import ray
    except ImportError:
        logger.warning("no Ray: `make install-ray`")
        return []
    config = load_config(CONFIG)
    if not Path(config.features_db).parent.is_dir():
        logger.warning("no demo at %s: build it with `make demo`", config.features_db)
        return []
    folder = tempfile.mkdtemp(prefix="bench_ray_")
    config = dataclasses.replace(config, corpus=dataclasses.replace(config.corpus, n_tokens=N_TOKENS),
                                 features_db=str(Path(folder) / "features.duckdb"))
    torch.set_num_threads(1)  # the local executor on one thread, as each Ray worker
    inputs = StudyInputs(config, _medical_words(config), show_progress=False)
    arm = config.arms[0]
    loaded = load_arm(arm, "cpu", verify=False, generates=False)
    fingerprints = {"model": weights_fingerprint(loaded.model), "sae": weights_fingerprint(loaded.sae)}
    inputs.corpus_rows(loaded), inputs.token_strings(loaded)  # tokenised once, before any timing
    stage = stages.REGISTRY["activations"]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        local = _timed_local(stage, inputs, loaded)
        by_workers = {n: _timed_ray(ray, n, stage, inputs, loaded, arm, fingerprints) for n in (1, 2)}
    finally:
        ray.shutdown()
    gpt2 = gpt2_small_shard()
    device = f"cpu ({_machine()}; each Ray worker 1 thread)"
    rows = [{"name": f"activations, local, {N_TOKENS:,} tokens", "seconds": local, "device": device}]
    for n, measured in by_workers.items():
        rows.append({"name": f"activations, ray {n} worker(s)", "seconds": measured["seconds"],
                     "reference": "local", "reference_seconds": local, "ratio": measured["seconds"] / local,
                     "speed_up": local / measured["seconds"], "startup_seconds": measured["startup_seconds"],
                     # without starting the workers (each imports torch and loads the arm once per run)
                     "speed_up_started": local / (measured["seconds"] - measured["startup_seconds"]),
                     "worker_tokens_per_second": measured["worker_tokens_per_second"], "device": device})
    rows.append({"name": f"one gpt2-small shard, d_sae {GPT2_D_SAE:,}, 1 thread",
                 "seconds": GPT2_SHARD_ROWS * 127 / gpt2["tokens_per_second"], "device": device, **gpt2})
    return rows
