"""The Label page's reads of the features database, with the current labels (dashboard.data.current_labels)
joined in the same query: the next candidate to label and each arm's progress."""

from __future__ import annotations

from core.database import queries as q
from dashboard.reads.connection import study_read

next_unlabelled_candidate = study_read(q.next_unlabelled_candidate)
label_progress = study_read(q.label_progress, columns=("arm", "candidates", "labelled", "left_out"))
