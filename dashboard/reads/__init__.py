"""The dashboard's typed reads of the features database, one function per read, grouped by what they read:

- study: the arms, token sets, stages and their metrics, the per-arm overview
- features: one feature's numbers, tokens, histogram, contexts; the Features table; the paper's figures
- labels: the Label page's queue and progress (labels themselves live in their own file: dashboard.data)
- pairs: the declared pairs, their roles (control pairs) and the pair stages' metrics and notes
- diff: the model diff of one pair: fates, matches, similarity, transfer, feature i on both sides, divergence
- changed: What changed: the difference lens, features whose activation changed, moved persisting features
- neighbours: nearest features by decoder cosine, correlated features, the feature map
- steering: what a steered text is scored against, Table 1's stored rows

Each is `study_read(<core.database read>, columns=...)`: the core function holds the SQL, the read adds the study's
database and the cache. A page calls `reads.features.feature_row(arm, feature)`; no read is looked up by name.
"""

from dashboard.reads import changed, diff, features, labels, neighbours, pairs, steering, study  # noqa: F401
