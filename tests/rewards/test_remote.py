"""The remote reward against real local servers on ephemeral ports: batching, retry of timeouts and 5xx, loud failure
after the last retry, no retry of 4xx, server-side validation, and use through the composer."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import rewards.remote  # noqa: F401  (registers "remote" until rewards.compose imports it)
from rewards.base import RewardError
from rewards.compose import RewardComposer, RewardsConfig, RewardTerm
from rewards.remote import RemoteReward, make_server
from rewards.rules import Length

PROMPTS = [f"prompt {i}" for i in range(7)]
COMPLETIONS = ["", "Oh no.", "I am so sorry.", "That sounds hard, I am here.", "a " * 20, "Hi", "One two three four"]
CATEGORIES = ["grief", None, "work", "grief", None, "work", "family"]
FAST = {"timeout_s": 2.0, "backoff_s": 0.01}  # client options that keep failing tests fast


class Recorder:
    """Wraps a component and records each call's (completions, metadata); the first ``slow_calls`` sleep."""

    def __init__(self, fn: Callable[..., Any], delay_s: float = 0.0, slow_calls: int = 0) -> None:
        self.fn, self.delay_s, self.slow_calls = fn, delay_s, slow_calls
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> Any:
        self.calls.append((completions, metadata))
        if len(self.calls) <= self.slow_calls:
            time.sleep(self.delay_s)
        return self.fn(prompts=prompts, completions=completions, **metadata)


def always_raises(prompts: list[str], completions: list[str], **metadata: Any) -> list[float]:
    raise ZeroDivisionError("model fell over")


def returns_nan(prompts: list[str], completions: list[str], **metadata: Any) -> list[float]:
    return [math.nan] * len(completions)


@contextmanager
def serving(component: Callable[..., Any], name: str = "length", max_batch: int | None = None) -> Iterator[str]:
    """``make_server`` on a free port, serving in a thread; yields its base URL."""
    server = make_server(component, name, port=0, max_batch=max_batch)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # quick shutdown
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def foreign_server(reply: dict[str, Any]) -> Iterator[str]:
    """A server written without rewards.remote that answers every POST with 200 and ``reply``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # quick shutdown
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/score"
    finally:
        server.shutdown()
        server.server_close()


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """Raw POST: (status, JSON reply), without the client's retries."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scores_equal_the_local_component_in_batches() -> None:
    local = Length(min_words=3, max_words=6)
    recorder = Recorder(local)
    with serving(recorder) as base:
        remote = RemoteReward(url=f"{base}/score", batch_size=3, **FAST)
        scores = remote(prompts=PROMPTS, completions=COMPLETIONS, category=CATEGORIES)
    assert scores == local(prompts=PROMPTS, completions=COMPLETIONS)
    assert all(isinstance(s, float) for s in scores)
    assert [len(c) for c, _ in recorder.calls] == [3, 3, 1]  # three requests of at most batch_size
    assert [m["category"] for _, m in recorder.calls] == [CATEGORIES[0:3], CATEGORIES[3:6], CATEGORIES[6:]]


def test_empty_batch_sends_nothing() -> None:
    recorder = Recorder(Length())
    with serving(recorder) as base:
        assert RemoteReward(url=f"{base}/score")(prompts=[], completions=[]) == []
    assert recorder.calls == []


def test_timeout_is_retried_then_succeeds() -> None:
    # The first call outlasts the client's timeout; the retry that waits behind it (one batch scored at a time) may
    # time out too; a later one is fast.
    # Timeouts of a second, not less: a loaded 2-core CI host can stall a fast reply for a few hundred ms.
    recorder = Recorder(Length(), delay_s=3.0, slow_calls=1)
    with serving(recorder) as base:
        remote = RemoteReward(url=f"{base}/score", timeout_s=1.0, retries=5, backoff_s=0.2)
        start = time.perf_counter()
        scores = remote(prompts=PROMPTS[:2], completions=COMPLETIONS[:2])
    assert scores == Length()(prompts=PROMPTS[:2], completions=COMPLETIONS[:2])
    assert time.perf_counter() - start >= 1.0  # it did wait for the first attempt to time out
    assert len(recorder.calls) >= 2


def test_server_error_every_time_raises_after_all_retries() -> None:
    recorder = Recorder(always_raises)
    with serving(recorder, name="flaky") as base:
        remote = RemoteReward(url=f"{base}/score", retries=2, **FAST)
        start = time.perf_counter()
        with pytest.raises(RewardError) as err:
            remote(prompts=PROMPTS, completions=COMPLETIONS)
    assert len(recorder.calls) == 3  # retries + 1 attempts, then no more
    assert time.perf_counter() - start >= 0.01 + 0.02  # backoff_s * 2**k between tries
    message = str(err.value)
    assert f"{base}/score failed after 3 attempts" in message
    assert "HTTP 500: reward component 'flaky' raised ZeroDivisionError: model fell over" in message


def test_nothing_listening_raises_after_all_retries() -> None:
    url = f"http://127.0.0.1:{closed_port()}/score"
    with pytest.raises(RewardError, match=r"failed after 4 attempts .* last error: ConnectionRefusedError"):
        RemoteReward(url=url, retries=3, **FAST)(prompts=PROMPTS, completions=COMPLETIONS)


def test_request_errors_are_not_retried() -> None:
    recorder = Recorder(Length())
    with serving(recorder, max_batch=2) as base:
        too_big = RemoteReward(url=f"{base}/score", batch_size=4, retries=3, backoff_s=5.0)
        start = time.perf_counter()
        with pytest.raises(RewardError, match=r"HTTP 413: .*--max-batch 2; set the client's batch_size <= 2"):
            too_big(prompts=PROMPTS, completions=COMPLETIONS)
        with pytest.raises(RewardError, match=r"HTTP 404: no POST /scores; use POST /score"):
            RemoteReward(url=f"{base}/scores", backoff_s=5.0)(prompts=PROMPTS[:1], completions=COMPLETIONS[:1])
    assert time.perf_counter() - start < 5.0  # no backoff sleep: a 4xx fails at once
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"prompts": ["a"]}', "'completions' must be a list of strings"),
        (b'{"prompts": ["a"], "completions": [3]}', "'completions' must be a list of strings"),
        (b'{"prompts": ["a", "b"], "completions": ["x"]}', "'prompts' has 2 entries for 1 completions"),
        (b'{"prompts": ["a"], "completions": ["x"], "metadata": {"category": []}}', "'metadata.category' must be"),
        (b'{"prompts": ["a"], "completions": ["x"], "metadata": [1]}', "'metadata' must be an object"),
        (b'{"prompts": ["a"], "completions": ["x"], "extra": 1}', "unknown fields ['extra']"),
    ],
)
def test_server_answers_400_naming_the_bad_field(body: bytes, message: str) -> None:
    recorder = Recorder(Length())
    with serving(recorder) as base:
        status, reply = post(f"{base}/score", body)
    assert status == 400 and message in reply["error"]
    assert recorder.calls == []


def test_server_answers_500_naming_the_component_for_nan_scores() -> None:
    with serving(returns_nan, name="nan_model") as base:
        status, reply = post(f"{base}/score", b'{"prompts": ["a", "b"], "completions": ["x", "y"]}')
        assert status == 500
        assert (
            reply["error"]
            == "reward component 'nan_model': score at index 0 is nan (must be finite in float32) (1 more)"
        )
        with pytest.raises(RewardError, match="'nan_model': score at index 0 is nan"):
            RemoteReward(url=f"{base}/score", retries=0)(prompts=["a"], completions=["x"])


def test_client_checks_the_reply_of_any_server() -> None:
    with (
        foreign_server({"scores": [1.0]}) as url,
        pytest.raises(RewardError, match="returned 1 scores for a batch of 2"),
    ):
        RemoteReward(url=url, name="judge")(prompts=["a", "b"], completions=["x", "y"])
    with foreign_server({"score": [1.0]}) as url, pytest.raises(RewardError, match="without a JSON object holding"):
        RemoteReward(url=url)(prompts=["a"], completions=["x"])
    with foreign_server({"scores": [True]}) as url, pytest.raises(RewardError, match="index 0 is True"):
        RemoteReward(url=url)(prompts=["a"], completions=["x"])


def test_health() -> None:
    with serving(Length(), name="length") as base, urllib.request.urlopen(f"{base}/health", timeout=5) as response:
        assert response.status == 200 and json.loads(response.read()) == {"status": "ok", "reward": "length"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "127.0.0.1:8000/score"}, "url must be an http"),
        ({"url": "ftp://host/score"}, "url must be an http"),
        ({"url": "http://h/score", "timeout_s": 0}, "timeout_s must be"),
        ({"url": "http://h/score", "retries": -1}, "retries must be"),
        ({"url": "http://h/score", "retries": 1.5}, "retries must be"),
        ({"url": "http://h/score", "backoff_s": -1}, "backoff_s must be"),
        ({"url": "http://h/score", "batch_size": 0}, "batch_size must be"),
        ({"url": "http://h/score", "name": ""}, "name must be"),
    ],
)
def test_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RemoteReward(**options)


def test_bad_metadata_is_a_clear_error_before_any_request() -> None:
    remote = RemoteReward(url=f"http://127.0.0.1:{closed_port()}/score", retries=0)
    with pytest.raises(TypeError, match="metadata 'category' cannot be sent as JSON"):
        remote(prompts=["a", "b"], completions=["x", "y"], category=[object(), "work"])
    with pytest.raises(ValueError, match="metadata 'category' must be a list of 2 values"):
        remote(prompts=["a", "b"], completions=["x", "y"], category=["work"])
    with pytest.raises(ValueError, match="got 1 prompts for 2 completions"):
        remote(prompts=["a"], completions=["x", "y"])


def test_composer_accepts_a_remote_term() -> None:
    local = Length(min_words=3, max_words=6)
    with serving(local) as base:
        term = RewardTerm(name="remote", weight=1.0, options={"url": f"{base}/score", "batch_size": 4})
        composer = RewardComposer(RewardsConfig(components=(term,), safety=()))
        out = composer(prompts=PROMPTS, completions=COMPLETIONS, category=CATEGORIES)
    expected = local(prompts=PROMPTS, completions=COMPLETIONS)
    assert out.components["reward/remote"].tolist() == pytest.approx(expected)
    assert out.rewards.tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="did you mean 'timeout_s'"):
        RewardTerm(name="remote", weight=1.0, options={"url": "http://h/score", "timeout": 1})
