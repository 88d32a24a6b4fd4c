"""The numbers Gupta & Sica (2024) report, with their source, to show beside ours (see ../shared/STUDY.md)."""

SOURCE = "Gupta & Sica 2024, Unveiling the Black Box"

# Table 2: coherence over the human-verified medical features.
COHERENCE_MEDICAL = {"base": {"mean": 0.5438, "median": 0.5648}, "finetuned": {"mean": 0.3511, "median": 0.3196}}
# Over all features, from the authors' own data (STUDY.md): about these means.
COHERENCE_ALL_MEAN = {"base": 0.34, "finetuned": 0.14}
# Medical features (≥ 2 matches, then verified): count and share of the SAE's features.
MEDICAL_FEATURES = {"base": (101, 0.0039), "finetuned": (111, 0.0043)}
# Figure 2: mean and variance of the medical features' activations.
MEDICAL_ACTIVATIONS = {"base": {"mean": 2.166, "var": 0.633}, "finetuned": {"mean": 0.794, "var": 0.018}}
# Table 1: steering, medical features passing (steered output closer to the top tokens than unsteered).
STEERING = {"base": {"passing": 100, "features": 101, "steered": 0.6118, "unsteered": 0.4634},
            "finetuned": {"passing": 93, "features": 111, "steered": 0.5165, "unsteered": 0.4651}}
