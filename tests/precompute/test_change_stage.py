"""The `change` stage on a tiny GPT-2 and a model b that is a plus a known vector u written into the residual stream
by block 0 (its MLP's output bias): at the SAE's hook every activation of b is a's plus u. So the difference lens
reads u (cosine 1, the same norm) and its top tokens are u's through the raw final norm and unembedding; the feature
whose encoder reads u ranks first among the increased ones, and the feature whose decoder is u aligns with the lens
in both SAEs. A model against itself changes nothing. Shards merged in any order give the one-shard tables."""

import pickle

import numpy as np
import pytest
import torch

from core.errors import StudyInputError
from core.loading import DEFAULT_PROCESSING, LoadedArm, hooked_transformer_from_hf, load_hf_model
from core.token_text import vocabulary_strings
from core.words import normalize_token
from factories import build_gpt2_folder, build_sae, byte_tokenizer
from precompute.pair import Pair
from precompute.stages import change

HOOK = "blocks.1.hook_resid_pre"
N_ROWS, T, BATCH, D_SAE, PLANTED = 12, 16, 3, 24, 9
PERMUTATION = np.random.default_rng(3).permutation(D_SAE)  # b's SAE: feature j is a's feature PERMUTATION[j]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = build_gpt2_folder(tmp_path_factory.mktemp("change") / "m", byte_tokenizer())
    hf, tokenizer = load_hf_model(str(folder))
    u = torch.randn(32, generator=torch.Generator().manual_seed(5))
    u = 3.0 * (u - u.mean()) / (u - u.mean()).norm()  # centred: TransformerLens centres what blocks write
    torch.manual_seed(1)
    sae = build_sae(d_in=32, d_sae=D_SAE, hook_name=HOOK)
    with torch.no_grad():
        sae.W_enc[:, PLANTED] = 2.0 * u / u.norm() ** 2  # pre-activation + 2 wherever u is added
        sae.b_enc[PLANTED] = -1.0
        sae.W_dec[PLANTED] = u / u.norm()
    permuted = build_sae(d_in=32, d_sae=D_SAE, hook_name=HOOK)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            source = getattr(sae, name)
            getattr(permuted, name).copy_(source if name == "b_dec" else
                                          source[:, PERMUTATION] if name == "W_enc" else source[PERMUTATION])
    body = torch.randint(1, len(tokenizer), (N_ROWS, T - 1), generator=torch.Generator().manual_seed(0))
    rows = torch.cat([torch.zeros(N_ROWS, 1, dtype=torch.long), body], dim=1)  # id 0: BOS only
    raw, _ = vocabulary_strings(tokenizer, hf.config.vocab_size)
    words = frozenset(w for w in (normalize_token(t) for t in raw) if w)  # every word token counts as "medical"
    return hf, tokenizer, u, sae, permuted, rows, words


def arm(name, parts, sae, plant=False, hook=HOOK):
    hf, tokenizer, u, *_ = parts
    model = hooked_transformer_from_hf(hf, tokenizer, DEFAULT_PROCESSING, "cpu")
    if plant:
        with torch.no_grad():
            model.blocks[0].mlp.b_out += u
    return LoadedArm(name, model, sae, hook, sae.cfg.d_sae, "cpu", DEFAULT_PROCESSING)


def make_pair(parts, planted=True, **settings):
    _, _, _, sae, permuted, rows, words = parts
    a, b = arm("base", parts, sae), arm("tuned", parts, permuted, plant=planted)
    return Pair(a, b, rows, BATCH, 0.8, 10.0, lambda desc: (lambda it: it), medical_words=words, **settings)


@pytest.fixture(scope="module")
def planted(parts):
    pair = make_pair(parts)
    return pair, change.PASSES.run_whole(pair)


def test_identical_models_change_nothing(parts):
    _, _, _, sae, _, rows, words = parts
    a = arm("base", parts, sae)
    pair = Pair(a, arm("copy", parts, sae), rows, BATCH, 0.8, 10.0, lambda desc: (lambda it: it), medical_words=words)
    assert change.STAGE.skip_reason(pair) is None
    tables, metrics = change.PASSES.run_whole(pair)
    features = tables["feature_change"].to_pandas()
    assert (features.change == 0).all() and (features.frac_change == 0).all() and (features.p == 1).all()
    assert features.q.dropna().eq(1).all() and features.rank_increase.isna().all()
    assert tables["feature_change_contexts"].num_rows == 0
    lens = tables["diff_lens"].to_pandas()
    assert (lens.norm == 0).all() and all((np.array(v) == 0).all() for v in lens.vector)
    assert tables["diff_lens_tokens"].num_rows == 0 and tables["diff_lens_features"].num_rows == 0
    assert metrics["n_increased"] == metrics["n_decreased"] == 0 == metrics["max_abs_change"]


def test_the_lens_reads_the_planted_vector_at_the_hook(parts, planted):
    hf, _, u, *_ = parts
    pair, (tables, metrics) = planted
    lens = tables["diff_lens"].to_pandas().set_index(["hook_name", "kind"])
    assert list(lens.index) == [(HOOK, "first"), (HOOK, "all"), ("blocks.1.hook_resid_post", "first"),
                                ("blocks.1.hook_resid_post", "all")]
    for kind, n_positions in (("first", 5), ("all", T - 1)):
        row = lens.loc[(HOOK, kind)]
        vector = np.array(row.vector)
        assert vector @ u.numpy() / (np.linalg.norm(vector) * u.norm().item()) > 1 - 1e-6
        assert row.norm == pytest.approx(3.0, rel=1e-5) and row.n_positions == n_positions
        assert row.n_tokens == N_ROWS * n_positions and row.layer == 1
    a_norm = pair.a.model.run_with_cache(pair.rows, names_filter=[HOOK])[1][HOOK][:, 1:6].norm(dim=-1).mean()
    assert lens.loc[(HOOK, "first")].norm_a == pytest.approx(a_norm.item(), rel=1e-5)


def test_the_lens_tokens_are_the_planted_vectors_through_the_raw_unembedding(parts, planted):
    hf, tokenizer, u, *_, words = parts
    pair, (tables, metrics) = planted
    w, W = hf.transformer.ln_f.weight.detach(), hf.lm_head.weight.detach()
    brute = ((u - u.mean()) * w) @ W.T  # the final LayerNorm centres and scales by w (its bias moves all alike)
    tokens = tables["diff_lens_tokens"].to_pandas()
    ours = tokens[(tokens.hook_name == HOOK) & (tokens.kind == "all") & (tokens.unembed_arm == "base")]
    assert ours[ours.direction == "top"].sort_values("rank").token_id.tolist() == torch.argsort(-brute)[:20].tolist()
    assert ours[ours.direction == "bottom"].sort_values("rank").token_id.tolist() == torch.argsort(brute)[:20].tolist()
    raw, _ = vocabulary_strings(tokenizer, hf.config.vocab_size)
    top = ours[ours.direction == "top"]
    assert top.is_medical.tolist() == [normalize_token(raw[i]) in words for i in top.token_id]
    lens = tables["diff_lens"].to_pandas().set_index(["hook_name", "kind"])
    assert 0 < lens.loc[(HOOK, "all")].medical_top20_a == top.is_medical.sum()
    assert metrics[f"lens_medical_top20_all_{HOOK}"] == top.is_medical.sum()
    assert 0 < metrics[f"lens_medical_top20_random_all_{HOOK}"] <= 20  # word tokens among random directions' top 20


def test_the_feature_reading_u_increases_most_and_the_one_writing_u_aligns(planted):
    pair, (tables, metrics) = planted
    features = tables["feature_change"].to_pandas().set_index("feature")
    assert features.rank_increase[PLANTED] == 0 and features.q[PLANTED] < 1e-6
    assert features.frac_b[PLANTED] > 0.9 > 0.1 > features.frac_a[PLANTED]
    contexts = tables["feature_change_contexts"].to_pandas()
    mine = contexts[(contexts.feature == PLANTED) & (contexts.direction == "increase")]
    assert len(mine) == 3 and (mine.row_change > 0.5).all() and mine.row_index.between(0, N_ROWS - 1).all()
    for context in mine.itertuples():  # the window's tokens are the row's, around its largest change
        start = context.max_pos - context.max_index
        assert list(context.token_ids) == pair.rows[context.row_index, start:start + len(context.token_ids)].tolist()
    aligned = tables["diff_lens_features"].to_pandas()
    first = aligned[(aligned.kind == "all") & (aligned.direction == "aligned") & (aligned["rank"] == 0)]
    b_index = int(np.flatnonzero(PERMUTATION == PLANTED)[0])
    assert first.set_index("sae_arm").feature.to_dict() == {"base": PLANTED, "tuned": b_index}
    assert first.cosine.gt(1 - 1e-5).all()


def test_shards_merged_in_any_order_give_the_one_shard_tables(planted):
    pair, reference = planted
    rng = np.random.default_rng(0)
    batches = [pair.rows[i:i + BATCH] for i in range(0, N_ROWS, BATCH)]
    for deal in ([[0, 2], [3], [1]], [[3, 1, 0], [2]]):
        shards = [change.shard(pair, torch.cat([batches[i] for i in batch_ids])) for batch_ids in deal]
        shards = [pickle.loads(pickle.dumps(s)) for s in shards]
        rng.shuffle(shards)
        merged = shards[0]
        for other in shards[1:]:
            merged.merge(other)
        assert_same_tables(change.finish(pair, merged), reference)


def assert_same_tables(ours, reference):
    (tables, metrics), (ref_tables, ref_metrics) = ours, reference
    assert metrics.keys() == ref_metrics.keys()
    np.testing.assert_allclose(list(metrics.values()), list(ref_metrics.values()), rtol=1e-9)
    for name, table in ref_tables.items():
        mine, theirs = tables[name].to_pylist(), table.to_pylist()
        assert len(mine) == len(theirs), name
        for row, ref_row in zip(mine, theirs):
            for column, value in ref_row.items():
                if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
                    np.testing.assert_allclose(row[column], value, rtol=1e-6, atol=1e-9, err_msg=f"{name}.{column}")
                else:
                    assert row[column] == value, f"{name}.{column}"


def test_bad_settings_fail_in_one_line_and_unlike_pairs_are_skipped(parts):
    with pytest.raises(StudyInputError, match=r"^diff\.lens_positions is 16 but the rows hold 15 tokens after BOS"):
        change.STAGE.skip_reason(make_pair(parts, lens_positions=16))
    with pytest.raises(StudyInputError, match=r"^diff\.lens_layers: \[2\] are not blocks"):
        change.STAGE.skip_reason(make_pair(parts, lens_layers=(2,)))
    pair = make_pair(parts)
    pair.b = LoadedArm("wide", pair.b.model, build_sae(d_in=48, d_sae=D_SAE, hook_name=HOOK), HOOK, D_SAE, "cpu",
                       DEFAULT_PROCESSING)
    assert "d_in 32 vs 48" in change.STAGE.skip_reason(pair)
    pair.b = arm("later", parts, parts[3], hook="blocks.0.hook_resid_post")
    assert "different hooks" in change.STAGE.skip_reason(pair)
