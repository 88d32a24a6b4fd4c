"""A real tiny pair for the Inspect page: a model and its perturbed copy, one SAE, tiny_db's model diff."""

from pathlib import Path

import duckdb
import torch

from core.loading import decoder_fingerprint
from factories import build_gpt2_folder, build_sae, byte_tokenizer, perturb_gpt2_folder, study_toml
from tiny_db import D_SAE, write_tiny_db

ALWAYS = (0, 5)  # features that read nothing and have bias 10: 10 on every token (0 persists, 5 emerges in tiny_db)
TEXT = "the kidney and the heart"
CORPUS = "n_tokens = 256\ncontext_size = 32"  # 8 rows of 32, the models' context: a row is read whole


def build_inspect_study(root: Path) -> Path:
    """Models, SAE, corpus and database under `root`; returns the study config's path."""
    tokenizer = byte_tokenizer()
    base = build_gpt2_folder(root / "base", tokenizer)
    finetuned = perturb_gpt2_folder(base, root / "finetuned", scale=0.5)
    sae = build_sae(d_in=32, d_sae=D_SAE, hook_name="blocks.1.hook_resid_pre")
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc[:, list(ALWAYS)] = 0.0
        sae.b_enc[list(ALWAYS)] = 10.0
        sae.b_enc[1] = -100.0  # never fires
    sae.save_model(str(root / "sae"))
    (root / "corpus.txt").write_text("a pulmonary artery and a vein\nthe heart\n"
                                     + "".join(f"the kidney {i} and the heart {i}\n" for i in range(40)))
    arms = [{"name": "base", "model": str(base), "sae_path": str(root / "sae")},
            {"name": "finetuned", "model": str(finetuned), "sae_path": str(root / "sae")}]
    config = root / "study.toml"
    config.write_text(study_toml(arms, corpus_paths=[str(root / "corpus.txt")], features_db=str(root / "f.duckdb"),
                                 labels_db=str(root / "l.duckdb")).replace("n_tokens = 1000", CORPUS))
    write_tiny_db(root / "f.duckdb", pair=True)
    with duckdb.connect(str(root / "f.duckdb")) as con:  # the SAE the database was computed with
        con.execute("UPDATE arms SET sae_fingerprint = ?", [decoder_fingerprint(sae)])
    return config
