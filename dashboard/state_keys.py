"""Every session-state and widget key of the dashboard, in one place (stable keys let AppTest drive pages)."""

CONFIG_PATH = "config_path"
