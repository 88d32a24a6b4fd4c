"""Command line of the precompute: `build-demo`, `train-saes`, `check`, `run`, `steer-eval`, `explain`, `export`,
`import-labels`.

User mistakes (`StudyInputError`) print one line and exit with code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from core.config import STEERING_MEASURES, StudyConfig
from core.errors import StudyInputError

DEFAULT_CONFIG = "configs/demo.toml"
# `build-demo --recipe NAME`: the shipped study configs whose [demo] section is a recipe.
RECIPES = {"demo": DEFAULT_CONFIG, "smollm2": "configs/smollm2-medical.toml", "family": "configs/family.toml"}
EXIT_USER_ERROR = 2
EXIT_NOT_READY = 3


def offline_defaults() -> None:
    """Offline environment unless the caller set otherwise (the command line and the tests share it).

    Without it a missing hub file costs ~30 s of retries, and wandb and tokenizers print noise."""
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "disabled"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m precompute", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("build-demo", help="build the embedded base / fine-tuned demo pair (offline)")
    source = demo.add_mutually_exclusive_group()
    source.add_argument("--config", default=None, help=f"study config with a [demo] recipe ({DEFAULT_CONFIG})")
    source.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                        help="a shipped recipe by name: " + ", ".join(f"{k} = {v}" for k, v in RECIPES.items()))
    demo.add_argument("--out", default=None, help="output folder (default: the folder of the config's features_db, data/demo)")
    demo.add_argument("--fast", action="store_true", help="tiny sizes from [demo.fast] (tests, CI): under a minute")
    demo.add_argument("--force", action="store_true", help="rebuild even if an identical build is already there")
    demo.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                      help="training device (cpu: the same weights on every machine)")

    train = sub.add_parser("train-saes", help="SAEs for a study's own base and fine-tuned models at the [demo] hook")
    train.add_argument("--config", default=DEFAULT_CONFIG,
                       help="study config: its first pair's arms and [demo] SAE fields")
    train.add_argument("--fast", action="store_true", help="the SAE fields of [demo.fast]")
    train.add_argument("--force", action="store_true", help="replace SAEs already in the arms' sae_path folders")
    train.add_argument("--keep-below-floor", action="store_true", help="write the SAEs even when they miss the floor")
    train.add_argument("--device", default="cpu", choices=("cpu", "cuda"))

    check = sub.add_parser("check", help="load every arm of a study and verify model, SAE and hook")
    check.add_argument("--config", default=DEFAULT_CONFIG)
    check.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))

    run = sub.add_parser("run", help="run the precompute stages and publish the features database")
    run.add_argument("--config", default=DEFAULT_CONFIG)
    run.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    run.add_argument("--only", default=None, metavar="STAGE,...",
                     help="run only these stages (projection, words, activations, quality); publishes once all are done")
    run.add_argument("--fresh", action="store_true", help="recompute every stage (labels are never touched)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    run.add_argument("--executor", default="local", choices=("local", "ray"),
                     help="local: every stage here (default); ray: arm stages' token passes in shards on Ray workers")
    run.add_argument("--ray-address", default=None, metavar="auto|ray://HOST:10001",
                     help="the Ray cluster to use (default: start a local instance on this machine)")
    run.add_argument("--ray-workers", type=int, default=None, metavar="N",
                     help="workers (actors) per arm (default: the cluster's GPUs, else its CPUs)")
    run.add_argument("--shard-rows", type=int, default=None, metavar="N",
                     help="corpus rows per shard, rounded up to whole batches (default: >= 32k tokens, <= 64 shards)")

    steer = sub.add_parser("steer-eval", help="the paper's causal test (Table 1): steer each feature, score, store")
    steer.add_argument("--config", default=DEFAULT_CONFIG)
    steer.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    steer.add_argument("--features", default="candidates",
                       help="candidates (>= 2 medical matches), labelled (humans said medical) or ids: 12,40")
    steer.add_argument("--samples", type=int, default=None, help="seeds per feature (config steering.samples: 3)")
    steer.add_argument("--random-directions", type=int, default=None, metavar="N",
                       help="random directions of the same norm per feature, the control (config "
                            "steering.random_directions: 5; 0: none)")
    steer.add_argument("--measure", default=None, choices=STEERING_MEASURES,
                       help="score texts in meaning (sentence, the default) or by word vectors (glove); "
                            "config steering.measure")
    steer.add_argument("--no-progress", action="store_true")

    explain = sub.add_parser("explain", help="explain features in words with an LLM, scored; kept apart from re-runs")
    explain.add_argument("--config", default=DEFAULT_CONFIG)
    explain.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    explain.add_argument("--features", default="candidates",
                         help="candidates, emerged, labelled, all (every feature that fired) or ids: 12,40")
    explain.add_argument("--backend", default=None, choices=("local", "openai"), help="config explain.backend (local)")
    explain.add_argument("--limit", type=int, default=None, help="at most N new explanations per arm")
    explain.add_argument("--summary", action="store_true",
                         help="instead: one summary of each pair (What changed's figures), citing feature ids")
    explain.add_argument("--no-progress", action="store_true")
    _export_parsers(sub)
    return parser


def _export_parsers(sub) -> None:
    export = sub.add_parser("export", help="share: Neuronpedia's upload layout, one HTML report, or labels")
    export.add_argument("--format", required=True, choices=("neuronpedia", "html", "labels"))
    export.add_argument("--out", required=True, help="output folder (absent or empty; --force replaces it)")
    export.add_argument("--config", default=DEFAULT_CONFIG)
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.add_argument("--arm", default=None, help="neuronpedia: the arm whose features to export")
    export.add_argument("--pair", default=None, metavar="A,B", help="html: the pair (default: the first declared)")
    export.add_argument("--no-weights", action="store_true",
                        help="neuronpedia: the database only (no logit histogram, neuron alignment, correlated "
                             "features)")
    export.add_argument("--creator-id", default=None, help="neuronpedia: the importing instance's user id")
    export.add_argument("--model-id", default=None, help="neuronpedia: model id (default <study>-<arm>)")
    imported = sub.add_parser("import-labels", help="add a labels export to this study's labels (same SAEs only)")
    imported.add_argument("file", help="labels.json written by `export --format labels`")
    imported.add_argument("--config", default=DEFAULT_CONFIG)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("gensim").setLevel(logging.WARNING)  # gensim logs every save/load at INFO
    offline_defaults()
    try:
        return {"build-demo": _build_demo, "train-saes": _train_saes, "check": _check, "run": _run,
                "steer-eval": _steer_eval,
                "explain": _explain, "export": _export, "import-labels": _import_labels}[args.command](args)
    except StudyInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


def _build_demo(args: argparse.Namespace) -> int:
    from core.config import load_config
    from precompute.demo.build import build_demo
    from precompute.demo.family import is_family_recipe

    config = load_config(RECIPES[args.recipe] if args.recipe else args.config or DEFAULT_CONFIG)
    out = Path(args.out) if args.out else config.output_dir
    start = time.perf_counter()
    if is_family_recipe(config):  # its pairs form a model family (issue 23): precompute/demo/family.py
        return _build_family(args, config, out, start)
    result = build_demo(config, out, fast=args.fast, force=args.force, device=args.device)
    manifest = result.manifest
    if result.skipped:
        print(f"Demo already built in {out} (same recipe and seed); --force rebuilds it.")
    print(f"Demo {'(fast) ' if manifest['fast'] else ''}in {out}  [{time.perf_counter() - start:.0f} s]")
    print("  held-out perplexity      general    medical")
    for arm, values in manifest["perplexity"].items():
        print(f"  {arm:<22} {values['general']:>9.1f} {values['medical']:>10.1f}")
    print(f"  fine-tuning changed medical perplexity by {100 * manifest['medical_perplexity_change']:+.0f}%")
    _print_drops_by_kind(manifest)
    for arm, sae in manifest["saes"].items():
        print(f"  SAE {arm:<10} {sae['hook_name']}  d_sae {sae['d_sae']}  L0 {sae['l0']:.1f}  "
              f"explained variance {sae['explained_variance']:.3f}  dead {100 * sae['dead_fraction']:.1f}%")
    _print_floor_and_budget(manifest)
    if manifest.get("finetune_warning"):  # last, where it is read (issue 26)
        print(f"  {manifest['finetune_warning']}")
    return 0


def _build_family(args: argparse.Namespace, config: StudyConfig, out: Path, start: float) -> int:
    from precompute.demo.family import build_family, summary_lines

    result = build_family(config, out, fast=args.fast, force=args.force, device=args.device)
    if result.skipped:
        print(f"Family already built in {out} (same recipe and seed); --force rebuilds it.")
    print(f"Family {'(fast) ' if result.manifest['fast'] else ''}in {out}  [{time.perf_counter() - start:.0f} s]")
    print("\n".join(summary_lines(result.manifest)))
    return 0


def _train_saes(args: argparse.Namespace) -> int:
    from core.config import load_config
    from precompute.train_saes import train_study_saes

    config = load_config(args.config)
    start = time.perf_counter()
    saes = train_study_saes(config, fast=args.fast, force=args.force, keep_below_floor=args.keep_below_floor,
                            device=args.device)
    print(f"SAEs of {config.name} trained  [{time.perf_counter() - start:.0f} s]")
    for arm, sae in saes.items():
        print(f"  SAE {arm:<10} {sae['architecture']} {sae['hook_name']}  d_sae {sae['d_sae']}  L0 {sae['l0']:.1f}  "
              f"explained variance {sae['explained_variance']:.3f}  dead {100 * sae['dead_fraction']:.1f}%  "
              f"-> {config.arm(arm).sae_path}")
    return 0


def _print_drops_by_kind(manifest: dict) -> None:
    """Perplexity change by kind of predicted token: the text tokens' says whether the fine-tune is about medicine."""
    drops = manifest.get("perplexity_drop_by_kind")
    if drops is None:  # builds from before perplexity was split by token kind
        return
    print("  change by token kind     general    medical   (text: no separator, not a document's first 3 tokens)")
    for kind in ("text", "separator", "first"):
        cells = [f"{-100 * drops[split][kind]:>+9.1f}%" if drops[split][kind] is not None else f"{'-':>10}"
                 for split in ("general", "medical")]
        print(f"  {kind:<22} {cells[0]} {cells[1]}")


def _print_floor_and_budget(manifest: dict) -> None:
    floor = manifest.get("quality_floor")
    if floor is not None:  # builds from before the floor was recorded have none
        state = "met" if floor["met"] else "NOT MET: " + "; ".join(floor["misses"])
        ratio = (f"text-token drop medical >= {floor['text_drop_ratio']:g}x general, " if "text_drop_ratio" in floor
                 else "")
        print(f"  quality floor (medical perplexity -{100 * floor['medical_perplexity_drop']:.0f}%, {ratio}"
              f"EV >= {floor['explained_variance']:.2f}, dead <= {100 * floor['dead_fraction']:.0f}%): {state}")
    if "total_s" in manifest:
        cpu = manifest["cpu"]
        slowest = sorted(manifest["timings_s"].items(), key=lambda item: -item[1])[:3]
        print(f"  build time {manifest['total_s']:.0f} s on {cpu['model']} ({cpu['torch_threads']} torch threads, "
              f"device {manifest['device']}); slowest: " + ", ".join(f"{k} {v:.0f} s" for k, v in slowest))
    if "reused" in manifest:  # the arms came from an earlier build: say what a build from nothing costs
        steps = manifest["reused"]["timings_s"]
        kept = sum(steps.values())
        print(f"  kept from the earlier build: {', '.join(steps)} (they took {kept:.0f} s there; from nothing "
              f"~{manifest['total_s'] + kept:.0f} s)")


def _check(args: argparse.Namespace) -> int:
    from core.config import load_config
    from core.loading import load_arm, weights_fingerprint
    from precompute.train_saes import check_model, sae_missing

    config = load_config(args.config)
    missing = [arm for arm in config.arms if sae_missing(arm)]
    if missing:  # a study of the user's own models before train-saes: check the models alone
        for arm in config.arms:
            print(check_model(arm, args.device or config.device))
        print(f"models ok; SAEs missing for {', '.join(arm.name for arm in missing)}: run `python -m precompute "
              f"train-saes --config {args.config}`, then check again")
        return EXIT_NOT_READY
    fingerprints: dict[str, str] = {}
    for arm in config.arms:
        loaded = load_arm(arm, args.device or config.device)
        fingerprints[arm.name] = weights_fingerprint(loaded.model)
        print(f"{arm.name}: {arm.model} ({loaded.model.cfg.original_architecture}) + SAE {arm.sae_source}: "
              f"hook {loaded.hook_name}, d_in {loaded.sae.cfg.d_in}, "
              f"d_sae {loaded.d_sae}, device {loaded.device}, weights {fingerprints[arm.name][:12]}")
    same = {fp for fp in fingerprints.values() if list(fingerprints.values()).count(fp) > 1}
    if same:
        raise StudyInputError(f"arms {sorted(n for n, fp in fingerprints.items() if fp in same)} have identical "
                              "weights: a fine-tuned arm that loads as its base is a loading bug")
    print(f"ok: {len(config.arms)} arm(s) load and match transformers")
    return 0


def _run(args: argparse.Namespace) -> int:
    from core.config import load_config
    from precompute.executors import make_executor
    from precompute.run import parse_only, run_study
    from precompute.summary import summary_lines

    executor = make_executor(args.executor, args.ray_address, args.ray_workers, args.shard_rows)
    start = time.perf_counter()
    try:
        config = load_config(args.config)
        report = run_study(config, device=args.device, only=parse_only(args.only), fresh=args.fresh,
                           show_progress=not args.no_progress, executor=executor)
    finally:
        executor.close()
    elapsed = time.perf_counter() - start
    if report.pending:
        print(f"Stages done; not published yet: {', '.join(report.pending)} still to run "
              f"(run `python -m precompute run --config {args.config}` without --only)  [{elapsed:.0f} s]")
        return 0
    state = "up to date (nothing to recompute)" if report.up_to_date else "published"
    print(f"{config.features_db}: {state}  [{elapsed:.0f} s]")
    for line in summary_lines(config, report):
        print(line)
    for name, counts in report.shards.items():
        print(f"  {name}: {counts['shards']} shards on Ray, {counts['reused']} reused from an earlier run")
    return 0


def _steer_eval(args: argparse.Namespace) -> int:
    import pandas as pd

    from core import database as db
    from core.config import load_config
    from precompute.steer_eval import steer_eval

    config = load_config(args.config)
    if args.samples is not None and args.samples < 1:
        raise StudyInputError("--samples must be at least 1")
    if args.random_directions is not None and args.random_directions < 0:
        raise StudyInputError("--random-directions must be at least 0 (0: no random control)")
    seconds = steer_eval(config, args.features, args.samples, args.device, show_progress=not args.no_progress,
                         measure=args.measure, random_directions=args.random_directions)
    print(f"{config.features_db}: steering results published")
    with db.connect_read_only(Path(config.features_db)) as con:
        table = db.queries.steering_table(con)
    print("  passing: the paper's rule (steered > unsteered); controlled: also above the random directions' mean")
    print("  arm        measure   features  passing        beats random  controlled       mean steered  mean unsteered"
          "  mean random  perplexity steered / unsteered  seconds  scored against")
    for _, row in table.iterrows():
        beats, both = row["beats random"], row["passing, beats unsteered and random"]
        control = (f"{int(beats):>12}  {int(both):>4} ({row['share passing both (%)']:>5.1f}%)" if not pd.isna(both)
                   else f"{'—':>12}  {'—':>12}")
        print(f"  {row.arm:<10} {row.measure:<8} {row.features:>8}  {row.passing:>4} ({100 * row.share:>5.1f}%)  "
              f"{control}  {row.mean_steered:>12.4f}  {row.mean_unsteered:>14.4f}  {row['mean random']:>11.4f}  "
              f"{row.steered_perplexity:>10.1f} / {row.unsteered_perplexity:<9.1f}  {seconds.get(row.arm, 0):>7.0f}  "
              f"{row['scored against']}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from core.config import load_config
    from core.explanations import ExplanationWriteError
    from precompute.explain.backends import BackendError
    from precompute.explain.run import explain_study

    config = load_config(args.config)
    if args.summary:
        return _summarize(config, args)
    start = time.perf_counter()
    try:
        report = explain_study(config, args.features, args.backend, args.limit, args.device,
                               show_progress=not args.no_progress)
    except (BackendError, ExplanationWriteError) as err:  # what was finished before it is kept
        print(f"error: {err} (explanations finished so far are kept; run again to go on)", file=sys.stderr)
        return 1
    print(f"{config.explanations_db}: explainer {report.explainer}  [{time.perf_counter() - start:.0f} s]")
    for arm, count in report.explained.items():
        print(f"  {arm:<10} {count:>5} explained  {report.skipped.get(arm, 0):>5} already there  "
              f"{report.empty.get(arm, 0):>3} empty replies")
    return 0


def _summarize(config, args: argparse.Namespace) -> int:
    from core.explanations import ExplanationWriteError
    from precompute.explain.backends import BackendError
    from precompute.explain.summary import summarize_study

    try:
        summaries = summarize_study(config, args.backend, args.device)
    except (BackendError, ExplanationWriteError) as err:  # summaries finished before it are kept
        print(f"error: {err}", file=sys.stderr)
        return 1
    for item in summaries:
        print(f"{item.arm_a} -> {item.arm_b} ({item.explainer}, stored in {config.explanations_db}):\n{item.summary}\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from core.config import load_config
    from precompute import export

    config, out = load_config(args.config), Path(args.out)
    if args.format == "neuronpedia":
        options = export.NeuronpediaOptions(weights=not args.no_weights, model_id=args.model_id,
                                            **({"creator_id": args.creator_id} if args.creator_id else {}))
        where = export.export_neuronpedia(config, args.arm, out, args.force, options)
        print(f"{where}: Neuronpedia upload layout (release, model, sourceset, source .jsonl; features/ and "
              "activations/ batch-N.jsonl.gz)")
    elif args.format == "html":
        print(f"{export.export_html(config, args.pair, out, args.force)}: one self-contained HTML file")
    else:
        counts = export.export_labels(config, out, args.force)
        print(f"{out / 'labels.json'}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0


def _import_labels(args: argparse.Namespace) -> int:
    from core.config import load_config
    from precompute.export import import_labels

    config = load_config(args.config)
    counts = import_labels(config, Path(args.file))
    print(f"{config.labels_db}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0
