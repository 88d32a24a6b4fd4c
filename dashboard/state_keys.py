"""Every session-state and widget key of the dashboard, in one place (stable keys let AppTest drive pages)."""

CONFIG_PATH = "config_path"

# Features page
FEATURES_ARMS = "features_arms"
FEATURES_COHERENCE = "features_coherence"
FEATURES_MIN_MATCHES = "features_min_matches"
FEATURES_DENSITY_MIN = "features_density_min"
FEATURES_DENSITY_MAX = "features_density_max"
FEATURES_LABEL_STATUS = "features_label_status"
FEATURES_WORD = "features_word"
FEATURES_EXPLANATION = "features_explanation"  # words searched in the features' explanations
FEATURES_BY_MEANING = "features_by_meaning"  # the explanation search matches meaning, not words
FEATURES_DEAD = "features_dead"
FEATURES_CANDIDATES = "features_candidates"
FEATURES_FATES = "features_fates"  # fates in the arm's first declared pair (persist, emerge, ...)
FEATURES_RESET = "features_reset"
FEATURES_SORT = "features_sort"
FEATURES_DESCENDING = "features_descending"
FEATURES_PAGE = "features_page"
FEATURES_PAGE_SIZE = "features_page_size"
FEATURES_BOUND = "features_{}_{}"  # a declared field's bound: .format(field name, "min" | "max")

# Feature page
FEATURE_ARM = "feature_arm"
FEATURE_ID = "feature_id"

# Label widget (suffixed with arm and feature so two widgets on one page do not collide)
LABEL_CHOICE = "label_choice"
LABEL_NOTE = "label_note"
LABEL_SAVE = "label_save"
LABEL_FORM = "label_form"
LAST_LABEL_EVENT = "last_label_event"  # this session's last saved label (id, arm, feature, label), for undo
LABEL_UNDO = "label_undo"

# Compare page
COMPARE_LEFT_ARM = "compare_left_arm"
COMPARE_LEFT_FEATURE = "compare_left_feature"
COMPARE_RIGHT_ARM = "compare_right_arm"
COMPARE_RIGHT_FEATURE = "compare_right_feature"

# Label page
LABEL_QUEUE_ARM = "label_queue_arm"
LABEL_QUEUE_MODE = "label_queue_mode"  # first pass, second pass (what this annotator has not labelled), adjudication
LABEL_QUEUE_SHOWN = "label_queue_shown"  # the feature the queue showed last (drawn again for a pending save)

# Sidebar (every page)
ANNOTATOR = "annotator"  # who is labelling: the name labels are saved under (also the URL's ?annotator=)

# Steer page
STEER_ARM = "steer_arm"
STEER_FEATURES = "steer_features"
STEER_COEFFICIENT = "steer_coefficient"  # the number box: the value used
STEER_COEFFICIENT_SLIDER = "steer_coefficient_slider"  # kept in sync with the box
STEER_PROMPT = "steer_prompt"
STEER_TEMPERATURE = "steer_temperature"
STEER_TOP_P = "steer_top_p"
STEER_PENALTY = "steer_penalty"
STEER_TOKENS = "steer_tokens"
STEER_SEED = "steer_seed"
STEER_SPECIAL = "steer_special_tokens"
STEER_MEASURE = "steer_measure"  # how texts are scored: sentence (in meaning) or glove (word vectors)
STEER_GO = "steer_go"
STEER_SWEEP = "steer_sweep"
STEER_BOTH = "steer_both"
STEER_OTHER_FEATURE = "steer_other_feature"
STEER_STOP = "steer_stop"
STEER_RESULT = "steer_result"  # the last Generate's runs, kept across reruns
STEER_SWEEP_RESULT = "steer_sweep_result"  # the last sweep (running, done, stopped or failed) and its texts
STEER_RANDOM = "steer_random_control"  # also generate along a random direction of the same norm (the control)

# Model diff page
DIFF_PAIR = "diff_pair"  # (arm_a, arm_b): one of the study's declared pairs
DIFF_STATUS = "diff_status_choice"
DIFF_SORT = "diff_sort"
DIFF_EXPORT_CSV = "diff_export_csv"
DIFF_EXPORT_PARQUET = "diff_export_parquet"

# Inspect page
INSPECT_TEXT = "inspect_text"  # the text box (in a form: its value is the text last run)
INSPECT_RUN = "inspect_run"
INSPECT_TOKEN = "inspect_token"  # index of the chosen token (BOS left out)
INSPECT_FEATURE = "inspect_feature"  # "arm:feature" whose activation shades both strips, or "" for none
INSPECT_BASE = "inspect_base"
INSPECT_FINETUNED = "inspect_finetuned"
INSPECT_ROW = "inspect_row"  # the corpus row whose tokens are inspected, or None for a typed text
INSPECT_ROW_SHOWN = "inspect_row_shown"  # the row whose text the box was last filled with

# Map page
MAP_COLOUR = "map_colour"
MAP_PAIR = "map_pair"  # the declared pair whose two arms the map lays out
MAP_CHART = "map_chart"  # the plotly chart's selection event (a click picks a feature)
CHANGED_PAIR = "changed_pair"  # What changed: the pair it answers for
CHANGED_LENS_SITE = "changed_lens_site"  # its difference lens: the site (hook) shown
CHANGED_LENS_KIND = "changed_lens_kind"  # "first" k positions or "all"
CHANGED_LENS_STRENGTH = "changed_lens_strength"  # steering with the lens vector: × the typical norm at its site
CHANGED_LENS_PROMPT = "changed_lens_prompt"
CHANGED_LENS_RUN = "changed_lens_run"
CHANGED_LENS_TOKENS = "changed_lens_tokens"
CHANGED_SUMMARY_RUN = "changed_summary_run"  # the "Summarise with <explainer>" button
