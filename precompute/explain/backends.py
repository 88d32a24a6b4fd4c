"""Explainer backends: an OpenAI-compatible chat endpoint (urllib, no client package) and a local
`transformers` instruct model run in-process. Both answer two things for lists of chat conversations:
`complete` (the reply text, greedy) and `yes_probability` (P("yes") of a Yes/No question, the judge that
core.explain.scoring asks)."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from core.config import ExplainConfig
from core.errors import StudyInputError

logger = logging.getLogger(__name__)
Messages = list[dict[str, str]]
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
YES, NO = "yes", "no"


class BackendError(RuntimeError):
    """The backend failed for good (after retries); the message is one line saying what to check."""


class ChatBackend(Protocol):
    name: str  # "backend:model", stored with each explanation

    def complete(self, conversations: list[Messages], max_tokens: int) -> list[str]: ...

    def yes_probability(self, conversations: list[Messages]) -> list[float]: ...


def answer_probability(reply: str, top_logprobs: list[dict[str, Any]] | None) -> float:
    """P(yes) from the first answer token's top logprobs (yes / no spellings pooled), else from the text."""
    mass = {YES: 0.0, NO: 0.0}
    for entry in top_logprobs or []:
        word = str(entry.get("token", "")).strip().lower()
        if word in mass:
            mass[word] += math.exp(float(entry.get("logprob", -math.inf)))
    if mass[YES] + mass[NO] > 0:
        return mass[YES] / (mass[YES] + mass[NO])
    word = reply.strip().lower()
    return 1.0 if word.startswith(YES) else 0.0 if word.startswith(NO) else 0.5


class OpenAIChat:
    """POST {base_url}/chat/completions, up to `concurrency` requests in flight, each retried with exponential
    back-off (0.5 s, 1 s, 2 s, ...; a server's Retry-After wins) on 429, 5xx, timeouts and refused connections."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 4,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 0.5) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.concurrency = model, api_key, concurrency
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.name = f"openai:{model}"
        self.retries = 0  # how many requests were retried (logged at the end of a run)
        self._lock = threading.Lock()

    def _post_once(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(payload).encode(), headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One chat completion, retried; BackendError after the last try or at once for another 4xx."""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post_once(payload)
            except urllib.error.HTTPError as err:
                if err.code not in RETRY_STATUSES or attempt == self.max_retries:
                    detail = err.read()[:200].decode(errors="replace").replace("\n", " ")
                    raise BackendError(f"{self.url} answered HTTP {err.code} ({detail}); check explain.base_url, "
                                       "explain.model and the key in explain.api_key_env") from None
                wait = _retry_after(err) or self.backoff_s * 2 ** attempt
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as err:
                if attempt == self.max_retries:
                    raise BackendError(f"{self.url} did not answer ({getattr(err, 'reason', err)}) after "
                                       f"{self.max_retries + 1} tries; is the server running?") from None
                wait = self.backoff_s * 2 ** attempt
            with self._lock:
                self.retries += 1
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _map(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.post, payloads))

    def complete(self, conversations: list[Messages], max_tokens: int) -> list[str]:
        replies = self._map([{"model": self.model, "messages": m, "max_tokens": max_tokens, "temperature": 0}
                             for m in conversations])
        return [_content(r) for r in replies]

    def yes_probability(self, conversations: list[Messages]) -> list[float]:
        replies = self._map([{"model": self.model, "messages": m, "max_tokens": 1, "temperature": 0,
                              "logprobs": True, "top_logprobs": 10} for m in conversations])
        return [answer_probability(_content(r), _top_logprobs(r)) for r in replies]


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    try:
        return min(30.0, float(err.headers.get("Retry-After", "")))
    except (TypeError, ValueError):
        return None


def _content(reply: dict[str, Any]) -> str:
    try:
        return reply["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise BackendError(f"the server's reply is not a chat completion: {str(reply)[:200]}") from None


def _top_logprobs(reply: dict[str, Any]) -> list[dict[str, Any]] | None:
    try:
        return reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None  # a server without logprobs: the reply's text decides


def backend_for(config: ExplainConfig, backend: str | None = None, device: str = "cpu") -> ChatBackend:
    """The configured backend (or `backend` from the command line)."""
    kind = backend or config.backend
    if kind == "openai":
        key = None
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise StudyInputError(f"explain.api_key_env names {config.api_key_env}, which is not set: export "
                                      f"{config.api_key_env}=... (or api_key_env = \"\" for a server without a key)")
        return OpenAIChat(config.base_url, config.model, key, config.concurrency, config.timeout_s, config.max_retries)
    from precompute.explain.local import LocalChat

    return LocalChat.load(config.model, device)


def model_label(model: str) -> str:
    """A short, stable name of a model reference for the explainer column (a file's name, not its path)."""
    module, sep, file = model.partition(":")
    return Path(file if sep and module.isidentifier() and not Path(model).exists() else model).name
