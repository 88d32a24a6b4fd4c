"""Sharing a study outside the dashboard (issue 26, "Share"): Neuronpedia's upload layout (`neuronpedia`), one
self-contained HTML report of a pair (`html`), and labels and explanations keyed by the decoder fingerprint
(`labels`). Pure conversions of rows already read; `precompute.export` reads the study, writes the files."""
