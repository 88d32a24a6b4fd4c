"""Explaining SAE features in words and scoring the explanations (no network: backends live in precompute/).

`prompt`: the explanation prompt as a pure function of a feature's top contexts, interval samples and logit
tokens (PROMPT_VERSION names it), and the parsing of the reply. `scoring`: simulation (predicted vs real
per-token activations on held-out contexts, Pearson r, after Bills et al. 2023) and detection (does the judge
tell activating from non-activating held-out contexts: balanced accuracy, after delphi), from yes/no questions
whose probability of "yes" any backend can answer.
"""

from core.explain.prompt import (PROMPT_VERSION, Context, FeatureEvidence, explanation_messages,
                                 parse_explanation)
from core.explain.scoring import (ExplanationScores, balanced_accuracy, detection_messages, pearson,
                                  simulation_messages)

__all__ = ["PROMPT_VERSION", "Context", "FeatureEvidence", "ExplanationScores", "balanced_accuracy",
           "detection_messages", "explanation_messages", "parse_explanation", "pearson", "simulation_messages"]
