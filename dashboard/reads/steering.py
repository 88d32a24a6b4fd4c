"""Steering's stored side: what a feature's steered text is scored against, and steer-eval's Table 1 rows."""

from __future__ import annotations

from core.database import queries as q
from dashboard.reads.connection import study_read

steering_targets = study_read(q.steering_targets, columns=("feature", "target", "rank", "token_id", "token", "value"))
steering_results = study_read(q.steering_results, columns=("arm", "feature", "coefficient", "passing", "target"))
steering_table = study_read(q.steering_table, columns=("arm", "measure", "features", "passing", "share"))
