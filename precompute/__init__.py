"""The offline job: reads a study config, runs stages, publishes one DuckDB file. Orchestration only."""
