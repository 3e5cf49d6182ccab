"""Real HTTP servers on loopback that speak OpenAI's and Anthropic's wire formats.

Each server runs a ``ThreadingHTTPServer`` (one thread per connection, HTTP/1.1
keep-alive) on 127.0.0.1 and an ephemeral port in a background thread, so slow
answers never hold up other requests and hundreds of connections are served at once.

    server.latency = 0.3                    # every successful answer takes 300 ms
    server.script("rate_limit", "server")   # the next two requests fail, then normal
    server.script(Fault("rate_limit", retry_after=None, retry_after_ms=250))
    server.rpm = 60                         # 429 + Retry-After beyond 60 requests a minute
    server.answer = lambda body, i: "..."   # the answer text of choice i
    server.hook = lambda rec: "drop" if "boom" in rec.raw.decode() else None
    server.requests[0].body["messages"]     # every request: body, headers, arrival time
    server.max_in_flight                    # peak number of requests being served at once

Fault kinds (`Fault.kind`): auth (401), forbidden (403), not_found (404),
context_length (400), bad_request (400), rate_limit (429 + Retry-After and/or
retry-after-ms), quota (OpenAI: 429 insufficient_quota without Retry-After;
Anthropic: 400 "credit balance is too low"), server (500, or ``status``),
overloaded (OpenAI 503, Anthropic 529), drop (close the socket without answering),
slow (wait ``delay`` seconds, then answer normally), malformed (200 with a broken
JSON body, or ``body``). ``body`` / ``headers`` / ``message`` override any fault's.

The default answer is derived from the prompt: ``"echo: <last user message>"`` for
choice 0 and ``"echo <i>: ..."`` for the others, or ``{"echo": ..., "index": i}`` when
JSON was asked for. ``stop`` cuts the text and ``max_tokens`` truncates it (at ~4
characters a token), with the matching finish reason.

Fixtures (``openai_server``, ``anthropic_server``, ``local_server``) point the
providers' environment variables at a fresh server and reset the provider registry.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

import pytest

__all__ = [
    "Fault", "Recorded", "FakeOpenAI", "FakeAnthropic", "OPENAI_KEY", "ANTHROPIC_KEY",
    "openai_server", "anthropic_server", "local_server", "complete", "complete_all",
]

OPENAI_KEY = "sk-test-openai-0123456789-SECRET"
ANTHROPIC_KEY = "sk-ant-test-0123456789-SECRET"

KINDS = ("auth", "forbidden", "not_found", "context_length", "bad_request", "rate_limit",
         "quota", "server", "overloaded", "drop", "slow", "malformed", "not_http")


@dataclass
class Fault:
    """What the server does with one request instead of answering normally."""

    kind: str
    status: int | None = None  # server: 500 by default
    retry_after: float | None = 1.0  # rate_limit: Retry-After seconds (None: omit)
    retry_after_ms: float | None = None  # rate_limit: retry-after-ms header
    retry_after_date: bool = False  # send Retry-After as an HTTP date
    delay: float = 0.0  # slow: seconds before the normal answer
    body: bytes | None = None  # raw body instead of the usual one
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; kinds: {', '.join(KINDS)}")


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    raw: bytes
    body: Any  # parsed JSON, or None
    arrived: float  # time.monotonic()
    fault: str | None = None  # what the server did instead of answering, if anything
    status: int | None = None  # the answer's status (None: dropped)
    response: Any = None  # the answer's body, parsed JSON when it is JSON
    response_headers: dict[str, str] = field(default_factory=dict)


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # many clients connect at once
    allow_reuse_address = True

    def __init__(self, fake: _FakeServer) -> None:
        self.fake = fake
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or go away are part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms ACK stalls
    server: _HTTPServer

    def do_POST(self) -> None:  # noqa: N802
        self.server.fake.handle(self)

    def do_GET(self) -> None:  # noqa: N802
        self.server.fake.send(self, 404, {"content-type": "application/json"},
                              b'{"error": {"message": "not found"}}')

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _FakeServer:
    """What both wire formats share: recording, faults, latency, RPM, threading."""

    path = ""

    def __init__(self, *, latency: float | Callable[[Recorded], float] = 0.0,
                 rpm: int | None = None, api_key: str | None = None,
                 answer: Callable[[dict, int], str] | None = None) -> None:
        self.latency = latency
        self.rpm = rpm
        self.api_key = api_key  # when set, other keys get a 401
        self.answer = answer or default_answer
        self.hook: Callable[[Recorded], Fault | str | None] | None = None
        self.requests: list[Recorded] = []
        self.plan: deque[Fault] = deque()
        self.in_flight = 0
        self.max_in_flight = 0
        self._window: deque[float] = deque()
        self._lock = threading.Lock()
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> _FakeServer:
        self._http = _HTTPServer(self)
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.01},
                                        daemon=True, name=type(self).__name__)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._http is None:
            return
        self._http.shutdown()
        with self._http.sockets_lock:
            for sock in list(self._http.open_sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._http.server_close()
        self._http = None

    def __enter__(self) -> _FakeServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._http is not None, "server not started"
        return self._http.server_address[1]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- configuration

    def script(self, *faults: Fault | str | None) -> None:
        """Queue what the next requests get (``None`` = a normal answer)."""
        for f in faults:
            self.plan.append(_fault(f) if f is not None else None)  # type: ignore[arg-type]

    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]

    # -- serving

    def handle(self, h: _Handler) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = Recorded("POST", h.path, {k.lower(): v for k, v in h.headers.items()}, raw, body,
                       time.monotonic())
        with self._lock:
            self.requests.append(rec)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._serve(h, rec)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        finally:
            with self._lock:
                self.in_flight -= 1

    def _serve(self, h: _Handler, rec: Recorded) -> None:
        if rec.path.split("?")[0] != self.path:
            return self.send(h, 404, {"content-type": "application/json"}, json.dumps(
                self.error_body("not_found", f"Unknown path {rec.path}")).encode(), rec)
        fault = self._decide(rec)
        rec.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "drop":
            h.close_connection = True  # close the socket without a response
            return None
        if fault is not None and fault.kind == "not_http":  # e.g. an SSH server on that port
            h.wfile.write(fault.body or b"SSH-2.0-OpenSSH_9.6\r\n")
            h.close_connection = True
            return None
        if fault is not None and fault.kind != "slow":
            return self.send(h, *self._fault_response(fault, rec), rec)
        if fault is None:  # the wire format's own checks (auth, required fields)
            problem = self.validate(rec)
            if problem is not None:
                rec.fault = problem.kind
                return self.send(h, *self._fault_response(problem, rec), rec)
        time.sleep(fault.delay if fault else self._latency(rec))
        status, headers, payload = self.success(rec)
        return self.send(h, status, {**headers, **self.limit_headers()}, payload, rec)

    def _latency(self, rec: Recorded) -> float:
        return float(self.latency(rec) if callable(self.latency) else self.latency)

    def _decide(self, rec: Recorded) -> Fault | None:
        limited = self._rpm_fault()
        if limited is not None:
            return limited
        if self.hook is not None:
            chosen = self.hook(rec)
            if chosen is not None:
                return _fault(chosen)
        with self._lock:
            return self.plan.popleft() if self.plan else None

    def _rpm_fault(self) -> Fault | None:
        if self.rpm is None:
            return None
        now = time.monotonic()
        with self._lock:
            while self._window and now - self._window[0] >= 60:
                self._window.popleft()
            if len(self._window) < self.rpm:
                self._window.append(now)
                return None
            wait = 60 - (now - self._window[0])
        return Fault("rate_limit", retry_after=math.ceil(wait), retry_after_ms=round(wait * 1000),
                     message=f"Rate limit reached: {self.rpm} requests per minute.")

    def _fault_response(self, fault: Fault, rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        if fault.kind in ("slow", "drop"):  # pragma: no cover - handled by the caller
            raise AssertionError(fault.kind)
        if fault.kind == "malformed":
            body = fault.body if fault.body is not None else b'{"id": "x", "choices": [{"ind'
            return 200, {"content-type": "application/json", **fault.headers}, body
        status, kind, message = self.error_for(fault, rec)
        headers = {"content-type": "application/json"}
        if fault.kind == "rate_limit":
            headers.update(self.limit_headers(exhausted=True))
            if fault.retry_after is not None:
                headers["retry-after"] = (
                    format_datetime(datetime.now(timezone.utc) + timedelta(seconds=fault.retry_after),
                                    usegmt=True)
                    if fault.retry_after_date else f"{fault.retry_after:g}")
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = f"{fault.retry_after_ms:g}"
        headers.update(fault.headers)
        body = fault.body if fault.body is not None else json.dumps(
            self.error_body(kind, fault.message or message)).encode()
        if fault.body is not None and "content-type" not in fault.headers:
            headers["content-type"] = "text/html"
        return status, headers, body

    def send(self, h: _Handler, status: int, headers: dict[str, str], body: bytes,
             rec: Recorded | None = None) -> None:
        if rec is not None:
            rec.status, rec.response_headers = status, headers
            try:
                rec.response = json.loads(body)
            except ValueError:
                rec.response = body
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _remaining(self) -> int:
        with self._lock:
            return max(0, (self.rpm or 10_000) - len(self._window))

    # -- wire format (subclasses)

    def error_for(self, fault: Fault, rec: Recorded) -> tuple[int, str, str]:  # pragma: no cover
        """(status, error type/code, message) for a fault."""
        raise NotImplementedError

    def error_body(self, kind: str, message: str) -> dict:  # pragma: no cover
        raise NotImplementedError

    def validate(self, rec: Recorded) -> Fault | None:  # pragma: no cover
        raise NotImplementedError

    def success(self, rec: Recorded) -> tuple[int, dict[str, str], bytes]:  # pragma: no cover
        raise NotImplementedError

    def limit_headers(self, exhausted: bool = False) -> dict[str, str]:  # pragma: no cover
        raise NotImplementedError


def _fault(f: Fault | str) -> Fault:
    return f if isinstance(f, Fault) else Fault(f)


def last_user(messages: Iterable[dict]) -> str:
    text = ""
    for m in messages or ():
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            text = content if isinstance(content, str) else json.dumps(content)
    return text


def wants_json(body: dict) -> bool:
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        return fmt.get("type") in ("json_object", "json_schema")
    return "JSON" in str(body.get("system") or "")


def default_answer(body: dict, index: int) -> str:
    prompt = last_user(body.get("messages", []))
    if wants_json(body):
        return json.dumps({"echo": prompt, "index": index})
    return f"echo: {prompt}" if index == 0 else f"echo {index}: {prompt}"


def _cut(text: str, stops: Any, max_tokens: Any) -> tuple[str, str | None, str | None]:
    """(text, why it ended: "stop" | "length" | None, the stop sequence hit)."""
    for stop in ([stops] if isinstance(stops, str) else stops or []):
        if stop and stop in text:
            return text[: text.index(stop)], "stop", stop
    if isinstance(max_tokens, int) and tokens(text) > max_tokens:
        return text[: max_tokens * 4], "length", None
    return text, None, None


def _prompt_tokens(messages: Any, system: Any = None) -> int:
    texts = [str(system)] if system else []
    texts += [str(m.get("content", "")) for m in messages or () if isinstance(m, dict)]
    return sum(tokens(t) + 4 for t in texts)


# ------------------------------------------------------------------------- OpenAI


class FakeOpenAI(_FakeServer):
    """``POST /v1/chat/completions``, OpenAI's format, ``x-ratelimit-*`` headers."""

    path = "/v1/chat/completions"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def limit_headers(self, exhausted: bool = False) -> dict[str, str]:
        remaining = 0 if exhausted else self._remaining()
        return {
            "x-ratelimit-limit-requests": str(self.rpm or 10_000),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": "1s" if exhausted else "6ms",
            "x-ratelimit-limit-tokens": "150000000",  # gpt-4o-mini at OpenAI's tier 5
            "x-ratelimit-remaining-tokens": "149999000",
            "x-ratelimit-reset-tokens": "300ms",
        }

    def error_body(self, kind: str, message: str) -> dict:
        types = {"rate_limit": ("requests", "rate_limit_exceeded"),
                 "quota": ("insufficient_quota", "insufficient_quota"),
                 "auth": ("invalid_request_error", "invalid_api_key"),
                 "not_found": ("invalid_request_error", "model_not_found"),
                 "context_length": ("invalid_request_error", "context_length_exceeded"),
                 "server": ("server_error", None), "overloaded": ("server_error", None)}
        typ, code = types.get(kind, ("invalid_request_error", None))
        return {"error": {"message": message, "type": typ, "param": None, "code": code}}

    def error_for(self, fault: Fault, rec: Recorded) -> tuple[int, str, str]:
        body = rec.body if isinstance(rec.body, dict) else {}
        model = body.get("model", "?")
        key = rec.headers.get("authorization", "").removeprefix("Bearer ")
        return {
            # a careless proxy might echo the whole key; Ember must scrub it
            "auth": (401, "auth", f"Incorrect API key provided: {key}. You can find your API "
                                  "key at https://platform.openai.com/account/api-keys."),
            "forbidden": (403, "forbidden", "You are not allowed to sample from this model"),
            "not_found": (404, "not_found", f"The model `{model}` does not exist or you do not "
                                            "have access to it."),
            "context_length": (400, "context_length", "This model's maximum context length is "
                               "128000 tokens. However, your messages resulted in 200000 tokens."),
            "bad_request": (400, "bad_request", "Invalid value for 'temperature'."),
            "rate_limit": (429, "rate_limit", f"Rate limit reached for {model} on requests per "
                           "min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s. "
                           "Add a payment method at https://platform.openai.com/account/billing."),
            "quota": (429, "quota", "You exceeded your current quota, please check your plan "
                                    "and billing details."),
            "server": (fault.status or 500, "server", "The server had an error while processing "
                                                      "your request. Sorry about that!"),
            "overloaded": (503, "overloaded", "The engine is currently overloaded."),
        }[fault.kind]

    def validate(self, rec: Recorded) -> Fault | None:
        key = rec.headers.get("authorization", "").removeprefix("Bearer ")
        if not key or (self.api_key is not None and key != self.api_key):
            return Fault("auth")
        body = rec.body
        if not isinstance(body, dict) or "model" not in body or not body.get("messages"):
            return Fault("bad_request", message="'model' and 'messages' are required.")
        return None

    def success(self, rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        body = rec.body
        n = int(body.get("n") or 1)
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        choices, completion = [], 0
        for i in range(n):
            text, why, _ = _cut(self.answer(body, i), body.get("stop"), limit)
            completion += tokens(text)
            choices.append({"index": i, "message": {"role": "assistant", "content": text,
                                                    "refusal": None},
                            "logprobs": None, "finish_reason": why or "stop"})
        prompt = _prompt_tokens(body["messages"])
        payload = {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
            "created": int(time.time()), "model": body["model"], "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
            "system_fingerprint": "fp_fake",
        }
        headers = {"content-type": "application/json", "x-request-id": f"req_{len(self.requests)}",
                   "openai-processing-ms": "1"}
        return 200, headers, json.dumps(payload).encode()


# ---------------------------------------------------------------------- Anthropic


class FakeAnthropic(_FakeServer):
    """``POST /v1/messages``, Anthropic's format, ``anthropic-ratelimit-*`` headers."""

    path = "/v1/messages"

    @property
    def url(self) -> str:
        return self.root  # the SDK adds /v1/messages

    def limit_headers(self, exhausted: bool = False) -> dict[str, str]:
        reset = (datetime.now(timezone.utc) + timedelta(seconds=1 if exhausted else 0.05))
        stamp = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
        headers = {}
        for kind, limit in (("requests", self.rpm or 4000), ("tokens", 400_000),
                            ("input-tokens", 300_000), ("output-tokens", 100_000)):
            remaining = 0 if exhausted and kind == "requests" else (
                self._remaining() if kind == "requests" else limit - 1000)
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{kind}-reset"] = stamp
        return headers

    def error_body(self, kind: str, message: str) -> dict:
        types = {"auth": "authentication_error", "forbidden": "permission_error",
                 "not_found": "not_found_error", "rate_limit": "rate_limit_error",
                 "server": "api_error", "overloaded": "overloaded_error"}
        return {"type": "error", "error": {"type": types.get(kind, "invalid_request_error"),
                                           "message": message}, "request_id": "req_fake"}

    def error_for(self, fault: Fault, rec: Recorded) -> tuple[int, str, str]:
        body = rec.body if isinstance(rec.body, dict) else {}
        model = body.get("model", "?")
        return {
            "auth": (401, "auth", "invalid x-api-key"),
            "forbidden": (403, "forbidden", "Your API key does not have permission to use the "
                                            "specified resource."),
            "not_found": (404, "not_found", f"model: {model}"),
            "context_length": (400, "context_length",
                               "prompt is too long: 250000 tokens > 200000 maximum"),
            "bad_request": (400, "bad_request", "messages: roles must alternate"),
            "rate_limit": (429, "rate_limit", "This request would exceed the rate limit for your "
                           "organization of 50 requests per minute."),
            "quota": (400, "quota", "Your credit balance is too low to access the Anthropic "
                                    "API. Please go to Plans & Billing to purchase credits."),
            "server": (fault.status or 500, "server", "Internal server error"),
            "overloaded": (529, "overloaded", "Overloaded"),
        }[fault.kind]

    def validate(self, rec: Recorded) -> Fault | None:
        # SDKs send the key as x-api-key or (anthropic 2.x) as a bearer token
        key = rec.headers.get("x-api-key") or rec.headers.get("authorization", "").removeprefix(
            "Bearer ")
        if not key or (self.api_key is not None and key != self.api_key):
            return Fault("auth")
        body = rec.body
        if "anthropic-version" not in rec.headers:
            return Fault("bad_request", message="anthropic-version: header is required")
        if not isinstance(body, dict) or not body.get("messages") or "model" not in body:
            return Fault("bad_request", message="model, messages: Field required")
        if "max_tokens" not in body:
            return Fault("bad_request", message="max_tokens: Field required")
        return None

    def success(self, rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        body = rec.body
        text, why, stop = _cut(self.answer(body, 0), body.get("stop_sequences"),
                               body.get("max_tokens"))
        reason = {"stop": "stop_sequence", "length": "max_tokens"}.get(why or "", "end_turn")
        payload = {
            "id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant",
            "model": body["model"], "content": [{"type": "text", "text": text}],
            "stop_reason": reason, "stop_sequence": stop,
            "usage": {"input_tokens": _prompt_tokens(body["messages"], body.get("system")),
                      "output_tokens": tokens(text), "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0},
        }
        headers = {"content-type": "application/json", "request-id": f"req_{len(self.requests)}"}
        return 200, headers, json.dumps(payload).encode()


# ----------------------------------------------------------------------- fixtures


def _hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxies, no stray settings: requests go straight to loopback."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "ANTHROPIC_AUTH_TOKEN",
                "ANTHROPIC_CUSTOM_HEADERS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _reset_providers() -> None:
    from ember import providers

    providers.reset()


@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch):
    """A `FakeOpenAI`, with OPENAI_BASE_URL / OPENAI_API_KEY pointing at it."""
    _hermetic(monkeypatch)
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        _reset_providers()
        yield server
    _reset_providers()


@pytest.fixture
def anthropic_server(monkeypatch: pytest.MonkeyPatch):
    """A `FakeAnthropic`, with ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY pointing at it."""
    _hermetic(monkeypatch)
    with FakeAnthropic() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        _reset_providers()
        yield server
    _reset_providers()


@pytest.fixture
def local_server(monkeypatch: pytest.MonkeyPatch):
    """A `FakeOpenAI` serving the 'local' provider through EMBER_LOCAL_BASE_URL."""
    _hermetic(monkeypatch)
    monkeypatch.delenv("EMBER_LOCAL_API_KEY", raising=False)
    with FakeOpenAI() as server:
        monkeypatch.setenv("EMBER_LOCAL_BASE_URL", server.url)
        _reset_providers()
        yield server
    _reset_providers()


# ------------------------------------------------------------------------ helpers


def complete(provider: Any, request: Any) -> list[Any]:
    """``await provider.complete(request)`` in a fresh loop, closing the clients after."""
    [result] = complete_all(provider, [request])
    if isinstance(result, BaseException):
        raise result
    return result


def complete_all(provider: Any, requests: list[Any]) -> list[Any]:
    """Many requests concurrently; each result is a list of Responses or the exception."""

    async def go() -> list[Any]:
        try:
            return await asyncio.gather(*(provider.complete(r) for r in requests),
                                        return_exceptions=True)
        finally:
            await provider.aclose()

    return asyncio.run(go())
