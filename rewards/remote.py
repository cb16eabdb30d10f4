"""Remote reward: score a batch with a component served over HTTP, e.g. a reward model on another GPU host.

Legend: B = completions in one request.

**Protocol** (plain JSON over HTTP; any language can implement the server):

    POST /score   {"prompts": [B strings], "completions": [B strings], "metadata": {"category": [B values], ...}}
              ->  200 {"scores": [B finite numbers]}
    GET /health   ->  200 {"status": "ok", "reward": "<name>"}

``metadata`` is optional; each of its values is a list of B JSON values (one per completion). Any other answer is
``{"error": "<message>"}``: 4xx for a bad request (the client's fault: not retried), 5xx when scoring failed (retried).
A server must never answer 200 with made-up scores; ``make_server`` answers 500 naming the component when it raises
or returns a wrong number of scores, a non-number, NaN or inf (``rewards.base.check_scores``).

**Client**: the registered component ``remote`` (``RemoteReward``) splits the batch into requests of at most
``batch_size`` completions and POSTs each to ``url``. A connection error, a timeout (``timeout_s`` per socket
operation) or an HTTP 5xx is retried up to ``retries`` times, sleeping ``backoff_s * 2**k`` before retry k + 1; then
it raises RewardError with the URL, the number of attempts and the last error, so the training step fails loudly.
It never returns zeros in place of scores.

**Server**: ``python jobs/serve_reward.py --reward NAME`` (see ``make_server``), bound to 127.0.0.1 by default.
There is no authentication: reach a remote host through an SSH tunnel rather than binding a public address.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rewards.base import RewardError, RewardFn, check_scores, register_reward

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 2**20  # the server refuses larger requests with 413
_RESERVED = ("prompts", "completions")  # metadata keys that would collide with the component's arguments


# --- client -----------------------------------------------------------------------------------------------------------


@register_reward("remote")
@dataclass(frozen=True)
class RemoteReward:
    """A component scored by an HTTP server (protocol in the module docstring); RewardError once retries run out.

    Config term: ``{name: remote, weight: 1.0, options: {url: "http://127.0.0.1:8000/score"}}``.
    """

    url: str  # the scoring endpoint, e.g. http://127.0.0.1:8000/score
    timeout_s: float = 30.0  # per socket operation (connect, send, each read) of one request
    retries: int = 3  # extra attempts per request after the first, on connection errors, timeouts and HTTP 5xx
    backoff_s: float = 0.5  # sleep backoff_s * 2**k before retry k + 1
    batch_size: int = 64  # most completions per request
    name: str | None = None  # used in error messages; default "remote <url>"

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be an http(s) URL such as http://127.0.0.1:8000/score, got {self.url!r}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be a finite number > 0, got {self.timeout_s}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0 (0: no retry), got {self.retries!r}")
        if not (math.isfinite(self.backoff_s) and self.backoff_s >= 0):
            raise ValueError(f"backoff_s must be a finite number >= 0, got {self.backoff_s}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.name is not None and not self.name:
            raise ValueError("name must be a non-empty string or left out")

    @property
    def label(self) -> str:
        return self.name or f"remote {self.url}"

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> list[float]:
        B = len(completions)
        if len(prompts) != B:
            raise ValueError(f"got {len(prompts)} prompts for {B} completions; pass one prompt per completion")
        metadata = _jsonable_metadata(metadata, B)
        scores: list[float] = []
        for start in range(0, B, self.batch_size):
            chunk = slice(start, start + self.batch_size)
            request = {
                "prompts": list(prompts[chunk]),
                "completions": list(completions[chunk]),
                "metadata": {key: values[chunk] for key, values in metadata.items()},
            }
            scores += self._post(json.dumps(request, allow_nan=False).encode(), len(request["completions"]))
        return scores

    def _post(self, body: bytes, n: int) -> list[float]:
        """POSTs one request of n completions, retrying transient failures; its n checked scores."""
        attempts, last_error = self.retries + 1, ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = response.read()
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code < 500:
                    raise RewardError(
                        f"reward component {self.label!r}: {self.url} answered HTTP {exc.code}: {message} "
                        "(a request error, not retried)"
                    ) from None
                last_error = f"HTTP {exc.code}: {message}"
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, bad status line
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                last_error = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
            else:
                return self._parse(reply, n)
            log.warning(
                "reward %r: attempt %d/%d to %s failed: %s", self.label, attempt + 1, attempts, self.url, last_error
            )
        raise RewardError(
            f"reward component {self.label!r}: {self.url} failed after {attempts} attempts "
            f"(timeout {self.timeout_s} s each); last error: {last_error}"
        )

    def _parse(self, reply: bytes, n: int) -> list[float]:
        """The scores of a 200 reply; RewardError (not retried) if it is not ``{"scores": [n finite numbers]}``."""
        try:
            scores = json.loads(reply)["scores"]
        except (ValueError, TypeError, KeyError) as exc:
            raise RewardError(
                f"reward component {self.label!r}: {self.url} answered 200 without a JSON object holding 'scores' "
                f"({type(exc).__name__}: {exc}); reply starts {reply[:200]!r}"
            ) from None
        check_scores(self.label, scores, n)  # RewardError for a wrong length, a non-number, NaN or inf
        return [float(s) for s in scores]


def _jsonable_metadata(metadata: dict[str, Any], batch_size: int) -> dict[str, list[Any]]:
    """Each metadata value as a list of B JSON values; ValueError/TypeError naming the key otherwise."""
    out = {}
    for key, values in metadata.items():
        if isinstance(values, str | bytes | dict) or not hasattr(values, "__len__") or len(values) != batch_size:
            raise ValueError(f"metadata {key!r} must be a list of {batch_size} values (one per completion)")
        values = list(values)
        try:
            json.dumps(values, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata {key!r} cannot be sent as JSON to the reward server: {exc}") from None
        out[key] = values
    return out


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The server's ``{"error": ...}`` message, else the start of the body, else the HTTP reason."""
    try:
        body = exc.read()
    except OSError:
        body = b""
    try:
        return str(json.loads(body)["error"])
    except (ValueError, TypeError, KeyError):
        return body[:500].decode(errors="replace").strip() or str(exc.reason)


# --- server -----------------------------------------------------------------------------------------------------------


class BadRequest(ValueError):
    """A malformed request; answered with ``status`` and the message, which names the bad field."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class RewardServer(ThreadingHTTPServer):
    """Serves one component; requests are read concurrently but scored one at a time (models need not be
    thread-safe)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], component: RewardFn, name: str, max_batch: int | None) -> None:
        self.component, self.reward_name, self.max_batch = component, name, max_batch
        self.score_lock = threading.Lock()
        super().__init__(address, RewardHandler)


class RewardHandler(BaseHTTPRequestHandler):
    """``POST /score`` and ``GET /health`` of the protocol in the module docstring."""

    server: RewardServer

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/health":
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no GET {self.path}; use GET /health or POST /score"})
            return
        self._send(HTTPStatus.OK, {"status": "ok", "reward": self.server.reward_name})

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/score":
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no POST {self.path}; use POST /score or GET /health"})
            return
        try:
            prompts, completions, metadata = parse_request(self._read_body(), self.server.max_batch)
        except BadRequest as exc:
            self._send(exc.status, {"error": str(exc)})
            return
        name = self.server.reward_name
        try:
            with self.server.score_lock:
                scores = self.server.component(prompts=prompts, completions=completions, **metadata)
            check_scores(name, scores, len(completions))  # RewardError naming the component
        except RewardError as exc:
            log.error("%s", exc)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
            return
        except Exception as exc:
            log.exception("reward component %r raised", name)
            message = f"reward component {name!r} raised {type(exc).__name__}: {exc}"
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": message})
            return
        self._send(HTTPStatus.OK, {"scores": [float(s) for s in scores]})

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest("the request needs a Content-Length header", HTTPStatus.LENGTH_REQUIRED)
        if not length.isdigit():
            raise BadRequest(f"Content-Length must be a byte count, got {length!r}")
        if int(length) > MAX_BODY_BYTES:
            raise BadRequest(f"body of {length} bytes exceeds {MAX_BODY_BYTES}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return self.rfile.read(int(length))

    def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, allow_nan=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            log.warning("client of %s %s left before the answer (timed out?)", self.command, self.path)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def parse_request(body: bytes, max_batch: int | None) -> tuple[list[str], list[str], dict[str, list[Any]]]:
    """``(prompts, completions, metadata)`` of a /score body; BadRequest naming the bad field."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"body must be a JSON object, got {type(request).__name__}")
    unknown = sorted(request.keys() - {"prompts", "completions", "metadata"})
    if unknown:
        raise BadRequest(f"unknown fields {unknown}; expected prompts, completions and optionally metadata")
    for field in _RESERVED:
        values = request.get(field)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadRequest(f"'{field}' must be a list of strings")
    prompts, completions = request["prompts"], request["completions"]
    B = len(completions)
    if len(prompts) != B:
        raise BadRequest(f"'prompts' has {len(prompts)} entries for {B} completions; send one prompt per completion")
    if max_batch is not None and max_batch < B:
        raise BadRequest(
            f"'completions' has {B} entries, more than this server's --max-batch {max_batch}; "
            f"set the client's batch_size <= {max_batch}",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    metadata = request.get("metadata", {})
    if not isinstance(metadata, dict):
        raise BadRequest(f"'metadata' must be an object of per-completion lists, got {type(metadata).__name__}")
    for key, values in metadata.items():
        if key in _RESERVED:
            raise BadRequest(f"'metadata.{key}' collides with the top-level field; rename it")
        if not isinstance(values, list) or len(values) != B:
            raise BadRequest(f"'metadata.{key}' must be a list of {B} values (one per completion)")
    return prompts, completions, metadata


def make_server(
    component: RewardFn, name: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int | None = None
) -> RewardServer:
    """A bound (not yet serving) server for ``component``; port 0 picks a free one (``server.server_port``).

    Run it with ``server.serve_forever()`` (in a thread in tests); stop with ``shutdown()`` then ``server_close()``.
    """
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None (no limit), got {max_batch}")
    return RewardServer((host, port), component, name, max_batch)
