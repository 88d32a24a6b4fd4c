"""The pass planner (precompute.plan) on two tiny models (a base and a perturbed copy, each with its own SAE):
one planned pass for similarity, matching, divergence and transfer's norms gives the tables of each stage's own
pass as it ran before the planner (the stages' former shard functions and core.divergence.corpus_divergence), with
one forward call per model per batch; a read that no planned stage asks for is never computed."""

import numpy as np
import pytest
import torch

from core.boundaries import special_token_ids
from core.divergence import corpus_divergence
from core.loading import DEFAULT_PROCESSING, LoadedArm, hooked_transformer_from_hf, load_hf_model
from factories import build_gpt2_folder, build_sae, byte_tokenizer, perturb_gpt2_folder
from precompute import stages
from precompute.pair import Pair
from precompute.plan import PlannedPass, PlannedShard, Read, plan_for, run_planned
from precompute.stages import divergence, matching, similarity, transfer

HOOK = "blocks.1.hook_resid_pre"
N_ROWS, T, BATCH = 12, 16, 3
PLANNED = ("similarity", "transfer", "matching", "divergence")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def loaded_arm(name, folder, seed):
    hf, tokenizer = load_hf_model(str(folder))
    torch.manual_seed(seed)
    sae = build_sae(d_in=32, d_sae=24, hook_name=HOOK)
    model = hooked_transformer_from_hf(hf, tokenizer, DEFAULT_PROCESSING, "cpu")
    return LoadedArm(name, model, sae, HOOK, 24, "cpu", DEFAULT_PROCESSING)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = build_gpt2_folder(root / "base", byte_tokenizer())
    a = loaded_arm("base", base, seed=1)
    b = loaded_arm("tuned", perturb_gpt2_folder(base, root / "tuned", scale=0.3), seed=2)
    body = torch.randint(3, a.model.cfg.d_vocab, (N_ROWS, T - 1), generator=torch.Generator().manual_seed(0))
    rows = torch.cat([torch.zeros(N_ROWS, 1, dtype=torch.long), body], dim=1)
    rows[2, 6] = rows[5, 9] = special_token_ids(a.model.tokenizer)[0]  # separators: boundary positions
    return Pair(a, b, rows, BATCH, threshold=0.5, outlier_factor=1.15, progress=lambda desc: (lambda it: it),
                row_ids=tuple(range(100, 100 + 2 * N_ROWS, 2)))


class ForwardCounts:
    """Calls of each model, of its ln_final (a final-residual read) and of its last block, while installed."""

    def __init__(self, pair):
        self.calls = {}
        self.handles = []
        for arm in (pair.a, pair.b):
            for part, module in (("forward", arm.model), ("ln_final", arm.model.ln_final),
                                 ("last block", arm.model.blocks[-1])):
                self.calls[arm.name, part] = 0
                self.handles.append(module.register_forward_pre_hook(
                    lambda module, args, key=(arm.name, part): self.calls.__setitem__(key, self.calls[key] + 1)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def assert_same_tables(ours, reference):
    (tables, metrics), (ref_tables, ref_metrics) = ours, reference
    assert tables.keys() == ref_tables.keys() and metrics.keys() == ref_metrics.keys()
    np.testing.assert_allclose([metrics[k] for k in ref_metrics], list(ref_metrics.values()), rtol=1e-9)
    for name, table in ref_tables.items():
        assert tables[name].column_names == table.column_names, name
        for column in table.column_names:
            mine, theirs = (t[column].to_pylist() for t in (tables[name], table))
            if table.schema.field(column).type in ("double", "float"):
                np.testing.assert_allclose(np.array(mine, float), np.array(theirs, float), rtol=1e-6, atol=1e-9,
                                           err_msg=f"{name}.{column}")
            else:
                assert mine == theirs, f"{name}.{column}"


def before_the_planner(pair, name):
    """The stage's tables as each stage ran its own pass before the planner."""
    if name == "divergence":
        result = corpus_divergence(pair.a, pair.b, pair.rows, pair.row_ids, divergence.TOP_CONTEXTS,
                                   divergence.DIVERGENT_SHARE, pair.batch_size,
                                   special_ids=special_token_ids(pair.a.model.tokenizer),
                                   boundary_tokens=pair.boundary_tokens)

        class Done:  # finish reads accumulator.result()
            def result(self):
                return result
        return divergence.finish(pair, Done())
    if name == "transfer":
        medians = transfer.norm_shard(pair, pair.rows).result()
        return transfer.finish(pair, transfer.transfer_shard(pair, pair.rows, medians))
    module = {"similarity": similarity, "matching": matching}[name]
    return module.finish(pair, module.shard(pair, pair.rows))


def test_one_planned_pass_gives_each_stages_own_tables_with_one_forward_per_model_per_batch(pair):
    plan = plan_for([(name, stages.REGISTRY[name]) for name in PLANNED], pair)
    assert plan.names == PLANNED
    with ForwardCounts(pair) as counts:
        first = run_planned(plan, pair, [pair.rows])
    n_batches = N_ROWS // BATCH
    for arm in ("base", "tuned"):  # one whole pass per model per batch (divergence reads the final residual)
        assert counts.calls[arm, "forward"] == counts.calls[arm, "ln_final"] == n_batches
    for name in PLANNED:
        stage = stages.REGISTRY[name]
        assert_same_tables(stage.passes.run_whole(pair, first[name]), before_the_planner(pair, name))
    assert before_the_planner(pair, "divergence")[1]["n_boundary"] > 0  # the separators were reported apart


def test_shards_of_the_planned_pass_merge_into_the_whole_pass(pair):
    plan = plan_for([(name, stages.REGISTRY[name]) for name in ("divergence", "matching")], pair)
    whole = run_planned(plan, pair, [pair.rows])
    cut = run_planned(plan, pair, [pair.rows[:3], pair.rows[3:9], pair.rows[9:]])
    for name in ("divergence", "matching"):
        stage = stages.REGISTRY[name]
        assert_same_tables(stage.passes.run_whole(pair, cut[name]), stage.passes.run_whole(pair, whole[name]))


def test_a_read_no_planned_stage_asks_for_is_never_computed(pair):
    """A planted stage reads both final residuals (its update counts calls); planned without it, similarity alone
    runs each model once a batch only as deep as its hook: no ln_final, no last block, the planted update never."""
    updates = []
    planted = PlannedPass(lambda pair: frozenset({Read("a"), Read("b")}), start=lambda pair, context: None,
                          update=lambda pair, acc, reads, context: updates.append(reads[Read("b")].shape))
    alone = PlannedShard((("similarity", similarity.PLANNED),))
    with ForwardCounts(pair) as counts:
        result = run_planned(alone, pair, [pair.rows])
    assert set(result) == {"similarity"} and updates == []
    for arm in ("base", "tuned"):
        assert counts.calls[arm, "forward"] == N_ROWS // BATCH
        assert counts.calls[arm, "ln_final"] == counts.calls[arm, "last block"] == 0
    with_planted = PlannedShard((("similarity", similarity.PLANNED), ("planted", planted)))
    with ForwardCounts(pair) as counts:
        run_planned(with_planted, pair, [pair.rows])
    assert len(updates) == N_ROWS // BATCH and counts.calls["tuned", "ln_final"] == N_ROWS // BATCH
    assert counts.calls["tuned", "forward"] == N_ROWS // BATCH  # still one call a batch: the reads share it


def test_a_stage_that_cannot_run_on_the_pair_is_left_out_of_the_plan(pair, monkeypatch):
    stage = stages.REGISTRY["similarity"]
    skipping = type(stage)(**{**stage.__dict__, "skip_reason": lambda pair: "different hooks"})
    plan = plan_for([("similarity", skipping), ("matching", stages.REGISTRY["matching"]),
                     ("map", stages.REGISTRY["map"])], pair)
    assert plan.names == ("matching",)
    assert plan_for([("map", stages.REGISTRY["map"])], pair) is None


def test_bf16_autocast_stays_within_the_stated_tolerance_of_a_float64_reference(pair):
    """The GPU path's autocast, on the CPU: similarity's mean cosine against float64 brute force over the same
    activations, divergence's mean KL and matching's correlations against float32, within AUTOCAST_TOLERANCE."""
    import dataclasses

    from core.hook_reads import activations_at_hook
    from precompute.plan import AUTOCAST_TOLERANCE

    names = ("similarity", "matching", "divergence")
    plan = plan_for([(name, stages.REGISTRY[name]) for name in names], pair)
    exact = run_planned(plan, pair, [pair.rows])
    low = run_planned(plan, dataclasses.replace(pair, autocast=True), [pair.rows])
    with torch.no_grad():
        acts = [activations_at_hook(m, HOOK, pair.rows).double() for m in (pair.a.model, pair.b.model)]
    want = torch.nn.functional.cosine_similarity(*acts, dim=-1).mean().item()
    assert low["similarity"].result().mean_cosine == pytest.approx(want, abs=AUTOCAST_TOLERANCE)
    assert exact["similarity"].result().mean_cosine == pytest.approx(want, abs=1e-9)
    kl_low, kl = (acc["divergence"].result().mean_kl for acc in (low, exact))
    assert kl > 0.01 and kl_low == pytest.approx(kl, rel=AUTOCAST_TOLERANCE)
    corr_low, corr = (np.nan_to_num(acc["matching"].result().correlation()) for acc in (low, exact))
    assert np.abs(corr_low - corr).max() <= AUTOCAST_TOLERANCE
    assert low["similarity"].sum_cosine.dtype == np.float64  # the accumulators keep float64 sums
