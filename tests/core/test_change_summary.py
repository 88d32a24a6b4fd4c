"""The "What changed" sentence: each clause from its facts, beside its control; missing facts leave clauses out."""

from core.change_summary import ChangeFacts, ControlFacts, LensFacts, what_changed

LENS = LensFacts("layer 3, first 5 tokens", ("kidney", "renal", "urine"), medical=7, random_medical=0.2)
CHANGE = ChangeFacts(((12, "renal | kidney"), (40, "")), top_share=0.24, live_share=0.06, n_top=50)
CONTROL = ControlFacts("base_resae", emerged=597, emerged_beyond=480, control_emerged=12, disappeared=300,
                       disappeared_beyond=7, control_disappeared=290)


def test_every_clause_names_its_measurement_and_its_control():
    text = what_changed("base", "finetuned", LENS, CHANGE, CONTROL)
    assert text.startswith("From base to finetuned: the mean activation difference (layer 3, first 5 tokens) reads "
                           "as “kidney, renal, urine” through finetuned's unembedding, 7 of its top 20 tokens medical "
                           "words (random directions of the same norm: 0.2);")
    assert "#12 (renal | kidney); #40, 24% of the 50 most increased are medical candidates against 6% of all live" in text
    assert text.endswith("480 of 597 emerged and 7 of 300 disappeared features are beyond the control pair base → "
                         "base_resae (which alone gives 12 emerged, 290 disappeared).")


def test_missing_measurements_are_left_out_and_a_missing_control_is_said():
    text = what_changed("base", "finetuned", lens=LENS)
    assert "rose most" not in text and "beyond the control" not in text
    assert text.endswith("no control is declared, so the fates are not read against SAE training noise.")
    assert what_changed("base", "finetuned") == "No diff measurements for base → finetuned in this database yet."
