"""A loopback OpenAI server for the reliability tests, built on `servers.FakeOpenAI`.

What it adds: no rate-limit headers unless asked (so a bare 429 is a quota 429 and
limits come only from `configure_limits`), a per-``window`` request limit that is
either a sliding window or a token bucket (so an "N per minute" limit can be tested
as "N per second"), and stalls that notice when the client hangs up.
"""

from __future__ import annotations

import math
import select
import socket
import threading
import time
from collections import deque
from typing import Any

import pytest

from servers import OPENAI_KEY, FakeOpenAI, Fault, _hermetic, _reset_providers

__all__ = ["FaultServer", "RemoteFaultServer", "fault_server", "MODEL", "Fault", "OPENAI_KEY", "retry_gaps"]

MODEL = "openai/gpt-4o-mini"


class FaultServer(FakeOpenAI):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.headers: dict[str, str] | None = None  # rate-limit headers on every answer
        self.limit: int | None = None  # requests per `window` seconds
        self.window = 1.0
        self.mode = "window"  # "window": sliding window; "bucket": token bucket
        self.stall: float = 0.0  # prompts containing STALL wait this long
        self.hangups: list[float] = []  # when a stalled request's client went away
        self._log: deque[float] = deque()
        self._level = 0.0
        self._stamp = time.monotonic()
        self._limit_lock = threading.Lock()

    def limit_headers(self, exhausted: bool = False) -> dict[str, str]:
        return dict(self.headers or {})

    def _rpm_fault(self) -> Fault | None:
        if self.limit is None:
            return None
        now = time.monotonic()
        with self._limit_lock:
            if self.mode == "bucket":
                rate = self.limit / self.window
                self._level = min(self.limit, self._level + (now - self._stamp) * rate)
                self._stamp = now
                if self._level >= 1:
                    self._level -= 1
                    return None
                wait = (1 - self._level) / rate
            else:
                while self._log and now - self._log[0] >= self.window:
                    self._log.popleft()
                if len(self._log) < self.limit:
                    self._log.append(now)
                    return None
                wait = self.window - (now - self._log[0])
        return Fault("rate_limit", retry_after=math.ceil(wait), retry_after_ms=round(wait * 1000))

    def set_limit(self, limit: int, window: float, mode: str = "window") -> None:
        """Allow ``limit`` requests per ``window`` seconds; beyond, 429 + Retry-After."""
        with self._limit_lock:
            self.limit, self.window, self.mode = limit, window, mode
            self._level, self._stamp = float(limit), time.monotonic()
            self._log.clear()

    def _serve(self, h: Any, rec: Any) -> None:
        if self.stall and "STALL" in rec.raw.decode("utf-8", "replace"):
            rec.fault = "stall"
            self._wait_for_hangup(h.connection, self.stall)
            h.close_connection = True
            return None
        return super()._serve(h, rec)

    def _wait_for_hangup(self, conn: socket.socket, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([conn], [], [], 0.01)
            if ready:
                try:
                    if conn.recv(1, socket.MSG_PEEK) == b"":
                        self.hangups.append(time.monotonic())
                        return
                except OSError:
                    self.hangups.append(time.monotonic())
                    return


def retry_gaps(server: FakeOpenAI) -> list[tuple[float, float]]:
    """(Retry-After asked, seconds until the same prompt came back) for every 429."""
    by_prompt: dict[str, list[Any]] = {}
    for rec in server.requests:
        by_prompt.setdefault(rec.raw.decode(), []).append(rec)
    gaps = []
    for recs in by_prompt.values():
        for rec, nxt in zip(recs, recs[1:]):
            if rec.status == 429:
                h = rec.response_headers
                asked = float(h["retry-after-ms"]) / 1000 if "retry-after-ms" in h \
                    else float(h["retry-after"])
                gaps.append((asked, nxt.arrived - rec.arrived))
    return gaps


@pytest.fixture
def fault_server(monkeypatch: pytest.MonkeyPatch):
    """A `FaultServer` behind the 'openai' provider, with Ember's limiter reset."""
    from ember.backends.limits import limiter

    _hermetic(monkeypatch)
    limiter.reset()
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        _reset_providers()
        import ember

        ember.models(MODEL, "warm up")  # load the SDK: its first request is slow to leave
        server.requests.clear()
        limiter.reset()
        yield server
    _reset_providers()
    limiter.reset()


class RemoteFaultServer:
    """A `FaultServer` in its own process, for tests that measure timing at the server:
    an in-process server shares the client's GIL, so its arrival stamps bunch up when
    the client is busy (under coverage, say) and a pacing test measures the GIL, not
    Ember. ``requests`` is filled when the server stops."""

    def __init__(self, limit: int, window: float, mode: str) -> None:
        import subprocess
        import sys

        self.requests: list[Any] = []
        self._proc = subprocess.Popen(
            [sys.executable, __file__, str(limit), str(window), mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self._proc.stdout.readline().strip()

    def stop(self) -> None:
        import json
        from types import SimpleNamespace

        if self._proc.returncode is not None:
            return
        out, _ = self._proc.communicate(timeout=30)  # closes stdin: the server stops
        self.requests = [SimpleNamespace(raw=r["raw"].encode(), arrived=r["arrived"],
                                         status=r["status"],
                                         response_headers=r["response_headers"])
                         for r in json.loads(out)]


def _serve_remote(limit: int, window: float, mode: str) -> None:  # pragma: no cover
    import json
    import sys

    with FaultServer() as server:
        server.set_limit(limit, window, mode)
        print(server.url, flush=True)
        sys.stdin.read()  # until the test closes our stdin
        json.dump([{"raw": r.raw.decode("utf-8", "replace"), "arrived": r.arrived,
                    "status": r.status, "response_headers": r.response_headers}
                   for r in server.requests], sys.stdout)


if __name__ == "__main__":  # pragma: no cover
    import sys

    _serve_remote(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3])
