"""Hand-made facts of a pair's summary (core.explain.summary), shared by the prompt and the client tests: base#7
changes less than the control pair changes it, every other feature more."""

from core.change_summary import ControlFacts
from core.explain.summary import FeatureFact, LensSite, RowFact, SummaryFacts

FACTS = SummaryFacts(
    "base", "finetuned", "base_resae",
    lens=(LensSite("blocks.3.hook_resid_post (layer 3), first 5 tokens after BOS",
                   ((" heart", True), (" the", False), (" kidney", True)), 7, 0.4),),
    increased=(FeatureFact("base", 123, "heart | pulse", 0.25, 1e-6, 0.01, "the heart and its beat"),
               FeatureFact("base", 7, "the | a", 0.02, 0.3, 0.05)),
    decreased=(FeatureFact("base", 99, "<|endoftext|>", -0.3, 2e-4, -0.001),),
    emerged=(FeatureFact("finetuned", 45, "vein | artery", q=0.01, explanation="blood vessels"),),
    counts=ControlFacts("base_resae", 597, 120, 12, 40, 3, 10),
    rows=(RowFact(12, 0.31, "the pulmonary <<artery>> and"),))
