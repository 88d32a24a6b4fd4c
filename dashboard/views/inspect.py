"""Inspect: your own text through both models, token by token: the features active on each token, and where the
fine-tuned model's next-token predictions part from the base model's. Its URL opens a view directly: ?text=... for
a text, ?row=N for corpus row N exactly as the precompute read it (the Model diff and Feature pages link so)."""

import pandas as pd
import streamlit as st

from core.corpus import rows_needed
from core.errors import StudyInputError
from core.feature_ids import FeatureIdError, parse_arm, parse_feature_id
from core.inspect import why_here
from dashboard import charts, data, live, place, reads, render, study
from dashboard import state_keys as keys

KL_SHADE = "76, 120, 168"  # blue: the divergence strip, apart from the orange of activations

data.require_database()
st.title("Inspect")
widths = reads.study.widths()
arms = list(widths)
if len(arms) < 2:
    st.info("Inspect compares two arms; this study has one.")
    st.stop()


def parse_choice(text: str, _place: dict) -> str:
    """"finetuned:12" → itself once checked against the arm's features; "" → no feature."""
    if not text:
        return ""
    arm, _, feature = text.partition(":")
    arm = parse_arm(arm, arms)
    return f"{arm}:{parse_feature_id(feature, arm, widths[arm])}"


def parse_row(text: str, _place: dict) -> int:
    """A corpus row id, checked against the corpus's size (a link to a row it does not have: one line)."""
    n_rows = rows_needed(study.study_config().corpus)
    if not text.strip().lstrip("-").isdecimal():
        raise ValueError(f"expected a whole number: the corpus has rows 0 to {n_rows - 1}")
    if not 0 <= int(text) < n_rows:
        raise ValueError(f"the corpus has rows 0 to {n_rows - 1}")
    return int(text)


def parse_token(text: str, _place: dict) -> int:
    """A token position (one past the run's last falls back to its most divergent token, below)."""
    if not text.strip().isdecimal():
        raise ValueError("expected a token position, a whole number from 0")
    return int(text)


fields = [place.Field(keys.INSPECT_ROW, "row", None, parse=parse_row),
          place.Field(keys.INSPECT_TEXT, "text", live.example_text(), always=True,
                      omit=lambda values: values[keys.INSPECT_ROW] is not None),  # a row names its text
          place.Field(keys.INSPECT_TOKEN, "token", None, parse=parse_token),
          place.Field(keys.INSPECT_FEATURE, "feature", "", parse=parse_choice),
          place.Field(keys.INSPECT_BASE, "base", arms[0], lambda text, _: parse_arm(text, arms)),
          place.Field(keys.INSPECT_FINETUNED, "finetuned", arms[1], lambda text, _: parse_arm(text, arms))]
place.restore_or_stop("inspect", fields)
row = place.kept(keys.INSPECT_ROW)
try:  # read in the first arm's tokenizer, as the pair stages read the corpus
    row_ids, row_text = live.corpus_row(row, arms[0]) if row is not None else (None, None)
except (StudyInputError, OSError, ValueError) as err:
    st.error(f"Corpus row {row} cannot be read: {err}")
    st.stop()
if row is not None and place.kept(keys.INSPECT_ROW_SHOWN) != row:  # a row just opened: its text
    place.change({keys.INSPECT_TEXT: row_text, keys.INSPECT_ROW_SHOWN: row})

with st.form("inspect_form", border=False):
    text = st.text_area("Text", key=keys.INSPECT_TEXT, height=110,
                        help="any text; a corpus context can be sent here from a feature's page")
    c1, c2, c3 = st.columns([1, 1, 4])
    base = c1.selectbox("Base arm", arms, key=keys.INSPECT_BASE)
    finetuned = c2.selectbox("Fine-tuned arm", arms, key=keys.INSPECT_FINETUNED)
    if c3.form_submit_button("Run", key=keys.INSPECT_RUN, type="primary"):
        place.change({keys.INSPECT_TOKEN: None})  # a new run starts at its most divergent token
if row is not None and text != row_text:  # the row's text was edited: it is a text of its own now
    row = row_ids = None
    place.change({keys.INSPECT_ROW: None, keys.INSPECT_ROW_SHOWN: None})
if base == finetuned:  # a model against itself: KL 0 at every token, nothing to read
    place.remember("inspect", fields)
    st.error(f"Both sides are {base}, the same arm: pick another arm for one side to compare.")
    st.stop()
for arm in dict.fromkeys((base, finetuned)):
    try:
        problem = live.sae_mismatch(arm)
    except Exception as err:  # noqa: BLE001 - a model or SAE that cannot be loaded is one line, not a traceback
        st.error(f"The model or SAE of {arm} cannot be loaded: {err}")
        st.stop()
    if problem is not None:
        st.warning(problem)
try:
    result = live.inspect(text, base, finetuned, ids=row_ids)
except StudyInputError as err:
    place.remember("inspect", fields)
    st.error(str(err))
    st.stop()
if row is not None:
    st.caption(f"Corpus row {row} ({live.row_sources([row])[0]}), its tokens exactly as the precompute read them.")
if result.notice:
    st.info(result.notice)
n = len(result.tokens)
token = place.kept(keys.INSPECT_TOKEN)
if not isinstance(token, int) or not 0 <= token < n:  # a new run or text: start at the most divergent token
    place.change({keys.INSPECT_TOKEN: max(range(n), key=lambda i: result.kl[i])})
pos = st.selectbox("Token", range(n), key=keys.INSPECT_TOKEN, help="or click a token in a strip below",
                   format_func=lambda i: f"{i}: {result.tokens[i]!r}  (KL {result.kl[i]:.3f})")
readings = {base: result.base, finetuned: result.finetuned}
forward, backward = reads.diff.persisting_partners(base, finetuned), reads.diff.persisting_partners(finetuned, base)
options = [""] + [f"{arm}:{f}" for arm, reading in readings.items() for f in reading.active[pos][0][:15]]
chosen = place.kept(keys.INSPECT_FEATURE, "")
if chosen and chosen not in options:
    options.append(chosen)  # chosen at another token: keep it
acts_at = {f"{arm}:{f}": a for arm, r in readings.items() for f, a in zip(*r.active[pos])}
choice = st.selectbox("Shade by feature", options, key=keys.INSPECT_FEATURE,
                      format_func=lambda o: "none" if not o else f"{o.replace(':', ' #')}  ({acts_at.get(o, 0):.3f} here)")
place.remember("inspect", fields)
token_hrefs = [place.href("inspect", fields, {keys.INSPECT_TOKEN: i}) for i in range(n)]  # a click picks a token


def shading(choice: str) -> dict[str, tuple[int | None, list[float]]]:
    """arm -> (feature shown in its strip, its activation per token): the chosen feature in its arm, its
    persisting match in the other (None when it has none)."""
    if not choice:
        return {arm: (None, [0.0] * n) for arm in readings}
    arm, feature = choice.split(":")[0], int(choice.split(":")[1])
    other = finetuned if arm == base else base
    match = (forward if arm == base else backward).get(feature)
    shown = {arm: feature, other: match}
    return {a: (f, readings[a].feature_acts(f) if f is not None else [0.0] * n) for a, f in shown.items()}


shades = shading(choice)
scale = max((max(acts) for _, acts in shades.values()), default=0.0)
for arm, (feature, acts) in shades.items():
    label = f"{arm}" + ("" if not choice else f" #{feature}" if feature is not None else " (no persisting match)")
    st.markdown(render.context_html(result.tokens, acts, scale, pos, label=label, token_hrefs=token_hrefs),
                unsafe_allow_html=True)
kl_scale = max(result.kl) if result.kl else 0.0
st.markdown(render.context_html(result.tokens, result.kl, kl_scale, pos, label="KL", shade=KL_SHADE,
                                token_hrefs=token_hrefs), unsafe_allow_html=True)
frame = pd.DataFrame({"position": range(n), "token": result.tokens, "kl": result.kl,
                      "logprob_change": result.logprob_change})
st.plotly_chart(charts.token_divergence(frame, pos), key="inspect_divergence")

following = repr(result.tokens[pos + 1]) if pos + 1 < n else "none (the text ends)"
st.subheader(f"Token {pos}: {result.tokens[pos]!r}")
st.caption(f"KL {result.kl[pos]:.4f} nats · next token {following}"
           + (f" · Δ log p {result.logprob_change[pos]:+.3f}" if result.logprob_change[pos] is not None else ""))
columns = st.columns(len(readings))
for column, (arm, reading) in zip(columns, readings.items()):
    ids, acts = reading.active[pos]
    tops = reads.features.top_texts(arm, ids[:30])
    column.markdown(f"**{arm}**: {len(ids)} features active")
    column.dataframe(pd.DataFrame({"feature": ids[:30], "activation": acts[:30],
                                   "top tokens": [tops.get(f, "") for f in ids[:30]],
                                   "page": [place.feature_url(arm, f) for f in ids[:30]]}),
                     hide_index=True, width="stretch",
                     column_config={"page": st.column_config.LinkColumn("page", display_text="open")})

st.subheader("Why here")
st.caption("The features whose activation on this token differs most between the arms (a persisting pair, or a "
           "feature with no partner), and what each writes directly into the logit of the next token: activation × "
           "W_dec[f] @ W_U[:, next] through the final normalisation (the direct path only; later layers not counted).")
rows = why_here((live.loaded_arm(base), live.loaded_arm(finetuned)), result, pos, forward, backward)
st.dataframe(pd.DataFrame([{
    f"{base} feature": r.base_feature, f"{finetuned} feature": r.finetuned_feature,
    f"{base} act": r.base_act, f"{finetuned} act": r.finetuned_act, "Δ act": r.act_change,
    f"{base} logit": r.base_logit, f"{finetuned} logit": r.finetuned_logit, "Δ logit": r.logit_change}
    for r in rows]), hide_index=True, width="stretch", key="inspect_why")
