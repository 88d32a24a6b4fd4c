"""`export` and `import-labels`: a study's results in the formats others read (core.export says what each holds).

Every export checks its input first (a published features database, a known arm or pair, an empty or --force'd
output folder) and writes into a temporary folder beside --out, renamed into place when complete: a failed or
refused export leaves --out as it was."""

from __future__ import annotations

import gzip
import inspect
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from core import database as db
from core import explanations as expl
from core import labels
from core.config import StudyConfig
from core.database import changed_queries, diff_queries
from core.errors import StudyInputError
from core.export import labels as label_file
from core.export import neuronpedia as npd
from core.export import reads
from core.export.weights import correlated_features, logit_histograms, neuron_alignment

logger = logging.getLogger(__name__)
FORMATS = ("neuronpedia", "html", "labels")
MAX_CORRELATED_D_SAE = 16_384  # the within-SAE co-activation sums are d_sae² float64: 2 GB at this width


def published(config: StudyConfig) -> Path:
    """The study's features database, or one line saying how to build it."""
    path = Path(config.features_db)
    if db.file_schema_version(path) != db.SCHEMA_VERSION:
        state = "no published features database" if not path.exists() else "a features database of another schema"
        raise StudyInputError(f"{path}: {state}; run `python -m precompute run --config <this study's config>` first")
    return path


def check_out(out: Path, force: bool) -> None:
    """--out must be a folder that is absent or empty, unless --force replaces it."""
    if out.exists() and not out.is_dir():
        raise StudyInputError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise StudyInputError(f"--out {out} is not empty: pass --force to replace it, or give another folder")


def write_atomically(out: Path, force: bool, write: Callable[[Path], None]) -> None:
    """`write(folder)` into a temporary folder beside `out`, then that folder becomes `out` (the old one removed)."""
    check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(staging)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{staging.name}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def _arm(con, config: StudyConfig, arm: str | None) -> dict:
    names = reads.arm_names(con)
    if arm is None:
        raise StudyInputError(f"--format neuronpedia needs --arm: one of {', '.join(names)}")
    row = reads.arm_row(con, arm)
    if row is None:
        raise StudyInputError(f"--arm {arm}: no such arm in {config.features_db} (arms: {', '.join(names)})")
    return row


@dataclass(frozen=True)
class NeuronpediaOptions:
    creator_id: str = npd.DEFAULT_CREATOR_ID
    creator_name: str = "sae-feature-diff"
    model_id: str | None = None  # default: "<study>-<arm>"
    source_set: str | None = None  # default: "<study>-<d_sae>"
    weights: bool = True  # logit histograms, neuron alignment, correlated features (loads the arm)
    device: str | None = None


def export_neuronpedia(config: StudyConfig, arm: str | None, out: Path, force: bool,
                       options: NeuronpediaOptions = NeuronpediaOptions()) -> Path:
    """The arm's features as Neuronpedia's importer reads them: out/<model>/<layer>-<source set>/...; returns that
    folder. Everything but the weights' fields comes from the published database."""
    path = published(config)
    check_out(out, force)
    with db.connect_read_only(path) as con:
        row = _arm(con, config, arm)
        study = reads.study_row(con)
        frames = (reads.activation_stats(con, arm), reads.logit_tokens(con, arm), reads.activation_histograms(con, arm),
                  reads.decoder_neighbours(con, arm), reads.contexts(con, arm))
        n_rows = reads.corpus_rows(con)
    names = npd.SourceNames(
        npd.slug(options.model_id or f"{config.name}-{arm}"), npd.slug(options.source_set or
                                                                     f"{config.name}-{int(row['d_sae'])}"),
        npd.layer_of(row["hook_name"]), options.creator_id, options.creator_name,
        datetime.now(timezone.utc).replace(microsecond=0).isoformat(), config.description or config.name)
    extras = _weight_extras(config, arm, row) if options.weights else npd.WeightExtras()
    stats, tokens, histograms, neighbours, contexts = frames
    features = npd.feature_records(names, int(row["d_sae"]), stats, tokens, histograms, study["hist_edges"],
                                   neighbours, extras)
    activations = npd.activation_records(names, contexts)
    meta = npd.metadata_records(names, row, config.name, n_rows, config.corpus.context_size, _dataset(config))
    source = Path(names.model_id) / names.source_id

    def write(folder: Path) -> None:
        target = folder / source
        (target / "features").mkdir(parents=True)
        (target / "activations").mkdir()
        for name, record in meta.items():
            (target / name).write_bytes(_jsonl([record]))
        for batch, start in enumerate(range(0, len(features), npd.FEATURES_PER_BATCH)):
            chunk = features[start:start + npd.FEATURES_PER_BATCH]
            ids = {r["index"] for r in chunk}
            (target / "features" / f"batch-{batch}.jsonl.gz").write_bytes(gzip.compress(_jsonl(chunk), 5))
            mine = [a for a in activations if a["index"] in ids]
            (target / "activations" / f"batch-{batch}.jsonl.gz").write_bytes(gzip.compress(_jsonl(mine), 5))

    write_atomically(out, force, write)
    logger.info("%s: %d features, %d activations", out / source, len(features), len(activations))
    return out / source


def _dataset(config: StudyConfig) -> str:
    from core.corpus import corpus_sources

    return ", ".join(name for name, _ in corpus_sources(config.corpus))


def _weight_extras(config: StudyConfig, arm: str, row: dict) -> npd.WeightExtras:
    """Load the arm (its SAE must be the one the database was built with) and read what the weights give."""
    from core.corpus import load_corpus_rows, token_set
    from core.hook_reads import features_at_hook
    from core.loading import decoder_fingerprint, load_arm
    from core.matching import CoactivationAccumulator

    arm_config = next(a for a in config.arms if a.name == arm)
    loaded = load_arm(arm_config, config.device, verify=False, generates=False)
    if decoder_fingerprint(loaded.sae) != row["sae_fingerprint"]:
        raise StudyInputError(f"arms[{arm}]: its SAE is not the one {config.features_db} was built from; run "
                              "`python -m precompute run` first, or export with --no-weights")
    W_dec, d_sae = loaded.sae.W_dec, loaded.d_sae
    histograms, alignment = logit_histograms(W_dec, loaded.model.W_U), neuron_alignment(W_dec)
    if d_sae > MAX_CORRELATED_D_SAE:
        logger.warning("d_sae %d: correlated features left out (above %d)", d_sae, MAX_CORRELATED_D_SAE)
        return npd.WeightExtras(histograms, alignment)
    rows = load_corpus_rows(config.corpus, loaded.model.tokenizer)
    rows = rows[list(token_set(config.corpus, config.diff.tokens).rows)]
    acc = CoactivationAccumulator(d_sae, d_sae)
    with torch.no_grad():
        for start in range(0, rows.shape[0], config.activations.batch_size):
            acts = features_at_hook(loaded.model, loaded.sae, loaded.hook_name,
                                    rows[start:start + config.activations.batch_size].to(W_dec.device))
            acts = acts.reshape(-1, d_sae)
            acc.update(acts, acts)
    return npd.WeightExtras(histograms, alignment, correlated_features(acc.result()))


def export_labels(config: StudyConfig, out: Path, force: bool) -> dict[str, int]:
    """out/labels.json: the labels and explanations of the arms' current SAEs. Returns counts."""
    path = published(config)
    check_out(out, force)
    with db.connect_read_only(path) as con:
        arms = [label_file.ArmSae(r["arm"], r["sae_fingerprint"], int(r["d_sae"]), r["sae_source"])
                for r in (reads.arm_row(con, name) for name in reads.arm_names(con))]
    fingerprints = {a.arm: a.sae_fingerprint for a in arms}
    events = labels.history(Path(config.labels_db), config.name)
    explained = expl.current_explanations(Path(config.explanations_db), config.name, fingerprints)
    doc = label_file.labels_document(config.name, arms, events, explained)
    write_atomically(out, force, lambda folder: (folder / label_file.FILE_NAME).write_text(
        json.dumps(doc, indent=1, ensure_ascii=False) + "\n"))
    return {"labels": len(doc["labels"]), "explanations": len(doc["explanations"]),
            "left out (other SAEs)": len(events) - len(doc["labels"])}


def import_labels(config: StudyConfig, file: Path) -> dict[str, int]:
    """Add a labels export's labels and explanations to this study's files, if every arm it labels has the same SAE
    here; events and explanations already present are skipped. Returns counts of what was added."""
    path = published(config)
    if not file.is_file():
        raise StudyInputError(f"{file}: no such file (export one with `python -m precompute export --format labels`)")
    doc = label_file.parse_document(file.read_text(), str(file))
    with db.connect_read_only(path) as con:
        target = {name: reads.arm_row(con, name)["sae_fingerprint"] for name in reads.arm_names(con)}
    label_file.check_same_saes(doc, target, str(file))
    labels_db = Path(config.labels_db)
    existing = label_file.records(labels.history(labels_db, config.name))
    added = label_file.new_events(doc["labels"], existing)
    for event in added:
        _save_label(labels_db, config.name, event)
    explanations = 0
    for item in doc["explanations"]:
        done = expl.explained_features(Path(config.explanations_db), config.name, item["arm"], item["sae_fingerprint"],
                                       item["explainer"], int(item["prompt_version"]))
        if int(item["feature"]) not in done:
            fields = {k: item.get(k) for k in expl.Explanation.__dataclass_fields__ if k in item}
            expl.save_explanation(Path(config.explanations_db), config.name, expl.Explanation(**fields))
            explanations += 1
    return {"labels": len(added), "labels already there": len(doc["labels"]) - len(added),
            "explanations": explanations, "explanations already there": len(doc["explanations"]) - explanations}


def _save_label(path: Path, study: str, event: dict) -> None:
    """core.labels.save_label with every field of the event it takes by name (note, the annotator under the name
    save_label gives it, and whatever else the log carries), so an export keeps what the labels log keeps."""
    accepted = [name for name in inspect.signature(labels.save_label).parameters
                if name not in ("path", "study", "arm", "feature", "sae_fingerprint", "label")]
    who = next((event.get(n) for n in label_file.ANNOTATOR_NAMES if event.get(n)), "")
    extra = {name: who if name in label_file.ANNOTATOR_NAMES else event[name]
             for name in accepted if name in label_file.ANNOTATOR_NAMES or event.get(name) is not None}
    labels.save_label(path, study, event["arm"], int(event["feature"]), event["sae_fingerprint"], event["label"],
                      **extra)


TOP_PER_FATE, CONTEXTS_PER_FEATURE = 10, 2


def _pair(arg: str | None, roles: dict) -> tuple[str, str]:
    declared = [p for p, role in roles.items() if not role["controls"]]
    if not roles:
        raise StudyInputError("this study compares no pair of arms: nothing changed to report")
    if arg is None:
        return (declared or list(roles))[0]
    pair = tuple(part.strip() for part in arg.split(","))
    if pair not in roles:
        raise StudyInputError(f"--pair {arg}: not a pair of this study (pairs: "
                              f"{'; '.join(','.join(p) for p in roles)})")
    return pair  # type: ignore[return-value]


def _lens_facts(con, pair: tuple[str, str]):
    """The page's lens facts at its default site: the deepest hook, the first tokens after BOS."""
    from core.change_summary import LensFacts

    sites = changed_queries.lens_sites(con, pair)
    first = sites[sites["kind"] == "first"]
    if first.empty or not first.iloc[0].norm > 0:
        return None
    site = first.iloc[0]
    tokens = changed_queries.lens_tokens(con, pair, site.hook_name, "first", pair[1])
    words = tuple(tokens[tokens["direction"] == "top"]["token"].str.strip().head(8))
    return LensFacts(f"layer {int(site.layer)}, first {int(first['n_positions'].max())} tokens after BOS", words,
                     int(site.medical_top20_b), float(site.random_medical_top20_b))


def _change_facts(con, pair: tuple[str, str], control: str | None):
    """The page's ranking facts: a's SAE features that rose most, and the medical share among the top 50."""
    from core.change_summary import ChangeFacts

    if changed_queries.lens_sites(con, pair).empty:
        return None
    risers = changed_queries.changed_features(con, pair, "increase", 15, control)
    if risers.empty and changed_queries.changed_features(con, pair, "decrease", 1, control).empty:
        return None
    share = changed_queries.change_enrichment(con, pair, 50)
    return ChangeFacts(tuple((int(r.feature), r.fired_text or "") for r in risers.head(3).itertuples()),
                       share["top_increase"], share["live"], share["n_top"])


def _cards(con, arm: str, measures: list[tuple[int, float | None]], explained, current_labels) -> tuple:
    from core.export.html import Context, FeatureCard

    features = [int(f) for f, _ in measures]
    words = reads.words(con, arm, features)
    contexts = reads.top_contexts(con, arm, features, CONTEXTS_PER_FEATURE)
    mine = explained[explained["arm"] == arm] if not explained.empty else explained
    said = dict(zip(mine["feature"].astype(int), mine["explanation"])) if not mine.empty else {}
    labelled = current_labels[current_labels["arm"] == arm] if not current_labels.empty else current_labels
    label = dict(zip(labelled["feature"].astype(int), labelled["label"])) if not labelled.empty else {}
    return tuple(FeatureCard(arm, f, None if m is None else float(m), words.get(f, ("", False))[0],
                             said.get(f, "") or "", label.get(f, ""),
                             tuple(Context(tuple(c.tokens), tuple(float(x) for x in c.acts), int(c.max_index))
                                   for c in contexts[contexts["feature"] == f].itertuples()))
                 for f, m in zip(features, (m for _, m in measures)))


def _sections(con, pair: tuple[str, str], facts, explained, current_labels) -> tuple:
    """The top features of each fate (emerged, disappeared, persisting but moved) and of the activation change."""
    from core.export.html import FateSection

    a, b = pair

    def cards(arm, features, measures):
        return _cards(con, arm, list(zip(features, measures)), explained, current_labels)

    if facts.emerged:
        emerged = FateSection(f"Emerged in {b}, beyond the control", f"{b}'s features with no partner in {a}, which "
                              f"changed more than SAE training alone changes a feature (control {facts.control}); "
                              "lowest q first.", "q (FDR)",
                              cards(b, [x.feature for x in facts.emerged], [x.q for x in facts.emerged]))
    else:
        rows = reads.fate_features(con, pair, b, "emerge", TOP_PER_FATE)
        emerged = FateSection(f"Emerged in {b}", f"{b}'s features with no partner in {a} (no activation correlation "
                              "at the threshold); farthest from any partner first.", "best correlation",
                              cards(b, rows["feature"], rows["match_corr"]))
    gone = reads.fate_features(con, pair, a, "disappear", TOP_PER_FATE)
    moved = changed_queries.moved_persisting(con, pair, TOP_PER_FATE)
    return (emerged,
            FateSection(f"Disappeared from {a}", f"{a}'s features with no partner in {b}; farthest from any partner "
                        "first.", "best correlation", cards(a, gone["feature"], gone["match_corr"])),
            FateSection(f"Persisting in {b}, output moved", f"{b}'s features that kept a partner in {a} but whose "
                        "decoder direction turned most from it (one per partner); lowest cosine first.",
                        "decoder cosine", cards(b, moved["feature"], moved["decoder_cos"])),
            FateSection(f"{a}'s SAE features that increased most in {b}", f"Mean activation in {b} minus in {a} on the "
                        f"same tokens ({a}'s SAE on both models).", "change",
                        cards(a, [x.feature for x in facts.increased], [x.change for x in facts.increased])),
            FateSection(f"{a}'s SAE features that decreased most in {b}", f"Mean activation in {b} minus in {a}.",
                        "change", cards(a, [x.feature for x in facts.decreased], [x.change for x in facts.decreased])))


def export_html(config: StudyConfig, pair_arg: str | None, out: Path, force: bool) -> Path:
    """out/what-changed-<a>-<b>.html: the pair's What changed answer in one self-contained file; returns its path."""
    from core.change_summary import what_changed
    from core.export.html import PairReport, render
    from precompute.explain.summary import database_reader, pair_facts

    path = published(config)
    check_out(out, force)
    with db.connect_read_only(path) as con:
        roles = diff_queries.pair_controls(con)
        pair = _pair(pair_arg, roles)
        control = roles[pair]["control"]
        fingerprints = {name: reads.arm_row(con, name)["sae_fingerprint"] for name in reads.arm_names(con)}
        explained = expl.current_explanations(Path(config.explanations_db), config.name, fingerprints)
        current_labels, _ = labels.labels_for(Path(config.labels_db), config.name, fingerprints)
        facts = pair_facts(database_reader(con), pair, control, config.diff.fdr, explained)
        sentence = what_changed(*pair, _lens_facts(con, pair), _change_facts(con, pair, control), facts.counts)
        sections = _sections(con, pair, facts, explained, current_labels)
        counts = tuple((r.arm, r.status, int(r.features)) for r in reads.fate_counts(con, pair).itertuples())
    stamp = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    report = PairReport(config.name, pair, sentence, facts, counts, sections, f"exported {stamp} from {path.name}")
    name = f"what-changed-{npd.slug(pair[0])}-{npd.slug(pair[1])}.html"
    write_atomically(out, force, lambda folder: (folder / name).write_text(render(report), encoding="utf-8"))
    return out / name
