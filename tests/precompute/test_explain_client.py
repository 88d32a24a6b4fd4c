"""The OpenAI-compatible client against a real HTTP server in the test: the protocol, the key from the
environment, concurrent requests, retries with back-off on 429 / 5xx / timeouts, and one-line failures."""

import time

import pytest

from core.config import ExplainConfig
from core.errors import StudyInputError
from openai_server import FakeOpenAI, serve
from precompute.explain.backends import BackendError, OpenAIChat, answer_probability, backend_for

HELLO = [[{"role": "user", "content": "hello"}]]


def test_a_chat_completion_round_trip_with_the_key_from_the_environment(monkeypatch):
    fake = FakeOpenAI(answer=lambda body: ("Explanation: the word heart", {}))
    monkeypatch.setenv("TEST_EXPLAIN_KEY", "sk-secret")
    with serve(fake) as url:
        chat = backend_for(ExplainConfig(backend="openai", base_url=url, model="m1", api_key_env="TEST_EXPLAIN_KEY"))
        assert chat.complete(HELLO, max_tokens=7) == ["Explanation: the word heart"]
    assert fake.requests == [{"model": "m1", "messages": HELLO[0], "max_tokens": 7, "temperature": 0}]
    assert fake.headers[0]["Authorization"] == "Bearer sk-secret"
    assert chat.name == "openai:m1"


def test_a_key_variable_that_is_not_set_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    with pytest.raises(StudyInputError, match="explain.api_key_env names NOT_SET_KEY, which is not set"):
        backend_for(ExplainConfig(backend="openai", api_key_env="NOT_SET_KEY"))


def test_requests_run_concurrently_up_to_the_limit():
    fake = FakeOpenAI(delay_s=0.3)
    with serve(fake) as url:
        chat = OpenAIChat(url, "m", concurrency=4)
        start = time.perf_counter()
        assert chat.complete(HELLO * 8, max_tokens=1) == ["Yes"] * 8
        elapsed = time.perf_counter() - start
    assert fake.max_in_flight == 4  # the server saw four at once, never more
    assert elapsed < 8 * 0.3  # two rounds of four, not eight in a row


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_busy_server_is_retried_with_back_off(status):
    fake = FakeOpenAI(fail_first=2, fail_status=status)
    with serve(fake) as url:
        chat = OpenAIChat(url, "m", concurrency=1, backoff_s=0.05)
        start = time.perf_counter()
        assert chat.complete(HELLO, max_tokens=1) == ["Yes"]
    assert len(fake.requests) == 3 and chat.retries == 2
    assert time.perf_counter() - start >= 0.05 + 0.1  # waited 0.05 s, then 0.1 s


def test_a_timeout_is_retried():
    fake = FakeOpenAI(stall_first=1, stall_s=1.0)
    with serve(fake) as url:
        chat = OpenAIChat(url, "m", concurrency=1, timeout_s=0.3, backoff_s=0.01)
        assert chat.complete(HELLO, max_tokens=1) == ["Yes"]
    assert len(fake.requests) == 2 and chat.retries == 1


def test_giving_up_and_a_bad_request_are_one_line_each():
    fake = FakeOpenAI(fail_first=100, fail_status=503)
    with serve(fake) as url:
        with pytest.raises(BackendError, match="HTTP 503"):
            OpenAIChat(url, "m", max_retries=2, backoff_s=0.01).complete(HELLO, max_tokens=1)
        assert len(fake.requests) == 3  # one try and two retries
        bad = FakeOpenAI(fail_first=1, fail_status=400)
    with serve(bad) as url:
        with pytest.raises(BackendError, match="HTTP 400.*explain.base_url"):
            OpenAIChat(url, "m", backoff_s=0.01).complete(HELLO, max_tokens=1)
    assert len(bad.requests) == 1  # a 400 is not retried
    with pytest.raises(BackendError, match="did not answer.*is the server running"):
        OpenAIChat("http://127.0.0.1:9/v1", "m", max_retries=1, backoff_s=0.01).complete(HELLO, max_tokens=1)


def test_yes_probability_from_logprobs_or_from_the_text():
    fake = FakeOpenAI(answer=lambda body: ("Yes", {"Yes": 0.6, " yes": 0.15, "No": 0.25}))
    with serve(fake) as url:
        assert OpenAIChat(url, "m").yes_probability(HELLO) == [pytest.approx(0.75)]
    assert fake.requests[0]["logprobs"] is True and fake.requests[0]["max_tokens"] == 1
    assert answer_probability("No.", None) == 0.0 and answer_probability("yes", []) == 1.0
    assert answer_probability("maybe", None) == 0.5


def test_a_key_in_the_config_file_is_refused(tmp_path):
    from core.config import load_config
    from factories import study_toml

    config = tmp_path / "study.toml"
    arms = [{"name": "base", "model": "m", "sae_path": "s"}]
    config.write_text(study_toml(arms) + '\n[explain]\nbackend = "openai"\napi_key = "sk-secret"\n')
    with pytest.raises(StudyInputError, match="explain.api_key: never put a key in the config; set "
                                              "explain.api_key_env"):
        load_config(config)
    config.write_text(study_toml(arms) + '\n[explain]\nbackend = "ollama"\n')
    with pytest.raises(StudyInputError, match="explain.backend: expected one of local, openai"):
        load_config(config)
