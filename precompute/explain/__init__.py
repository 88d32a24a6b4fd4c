"""`python -m precompute explain`: explain features in words with an LLM and score the explanations."""
