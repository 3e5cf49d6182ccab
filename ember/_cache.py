"""`cache`: a persistent result cache for functions.

    @ember.cache(ttl=86_400)
    def summarize(text): return models("gpt-4o-mini", f"Summarize: {text}")

Results live in one SQLite file (WAL mode, safe under concurrent threads and
processes) at ``$EMBER_CACHE_DIR/cache.sqlite3``, else under the user cache directory
(``~/.cache/ember`` on Linux, ``~/Library/Caches/ember`` on macOS,
``%LOCALAPPDATA%\\ember\\Cache`` on Windows); the directory is made 0700 and the files
0600. The key is an xxhash of the function's identity (module, qualified name and a
fingerprint of its code, so editing the function starts afresh), what it captured (see
`captured`; state the function changes itself is learned and left out) and its
arguments.
Arguments are only hashed, never stored. Values are JSON, never pickle: str, numbers,
bool, None, lists, tuples, dicts, `Response` (via `Response.to_dict`, with a type
tag) and pydantic models (``model_dump(mode="json")`` and the class's import path: read
back only when that class is already imported, and by ``model_validate``, so a cache
file can never make Ember import or run anything; otherwise the entry is a miss). A call
whose arguments or result are of another type runs uncached, with a one-time warning
naming the type — caching is an optimization and never breaks a call.

Under `jit`, a cached function whose arguments are known is looked up while tracing:
a hit becomes a constant, so its calls are never made (the run report counts the hit
once, in `cache_hits`); a miss is traced through.
Arguments computed by a model call are first awaited (a graph break), so a hit never
pays for calls. The result is stored when the function's Python returns on real
values (jit's check run), so a `vmap` over a cached function stores each element as
it finishes and an interrupted run pays again only for the unfinished ones.

Keys and values are made in `ember._cache_keys`; this module holds the store and the
wrapper.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import threading
import time
import warnings
from typing import Any, Callable

import xxhash

from ._cache_keys import Unsupported, canonical, captured, decode, encode, identity
from ._keywords import hint_keywords
from .ir.trace import UNKNOWN, Traced, current_trace

__all__ = ["cache", "cache_dir", "CacheStore"]

_VERSION = 1


def cache_dir() -> str:
    """Where `cache` keeps its file by default (``EMBER_CACHE_DIR`` overrides)."""
    env = os.environ.get("EMBER_CACHE_DIR")
    if env:
        return os.path.expanduser(env)
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
        return os.path.join(base, "ember", "Cache")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/ember")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "ember")


# ---- the store ----------------------------------------------------------------------------
JOURNAL_LIMIT = 16 << 20  # bytes of write-ahead log kept after a checkpoint
SWEEP_EVERY = 256  # stores of a function between deletions of its expired rows


class CacheStore:
    """One SQLite file; a connection per thread (and per process, after a fork)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._puts: dict[str, int] = {}  # stores per function, for the sweeps

    def _conn(self) -> Any:  # sqlite3.Connection (imported on first use)
        import sqlite3

        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        folder = os.path.dirname(self.path) or "."
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)  # private before any data
        os.close(fd)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        for _ in range(50):  # WAL switch / schema creation can race another process
            try:
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                # the log shrinks back after a checkpoint (several writer processes grew
                # it to 265 MB beside a 19 MB file, for as long as they lived)
                conn.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT}")
                conn.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, "
                             "fn TEXT NOT NULL, value TEXT NOT NULL, created REAL NOT NULL)")
                conn.execute("CREATE TABLE IF NOT EXISTS volatile (fn TEXT NOT NULL, "
                             "path TEXT NOT NULL, PRIMARY KEY (fn, path))")
                columns = {row[1] for row in conn.execute("PRAGMA table_info(results)")}
                if "expires" not in columns:  # (a file from before the sweeps)
                    conn.execute("ALTER TABLE results ADD COLUMN expires REAL")
                break
            except sqlite3.OperationalError:
                time.sleep(0.05)
        for suffix in ("", "-wal", "-shm"):
            try:
                os.chmod(self.path + suffix, 0o600)
            except OSError:
                pass
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def get(self, key: str, ttl: float | None) -> str | None:
        row = self._conn().execute("SELECT value, created FROM results WHERE key = ?",
                                   (key,)).fetchone()
        if row is None or (ttl is not None and time.time() - row[1] > ttl):
            return None
        return row[0]

    def put(self, key: str, fn: str, value: str, ttl: float | None = None) -> None:
        """Store a result, with its expiry under ``ttl``; every `SWEEP_EVERY` stores of a
        function with a ttl, its rows stored with one that are past it go (else a cache
        with a ttl only ever grew). A row stored without one stays: another wrapper of
        the same function, with no ttl, relies on it."""
        conn = self._conn()
        now = time.time()
        conn.execute("INSERT OR REPLACE INTO results (key, fn, value, created, expires) "
                     "VALUES (?, ?, ?, ?, ?)",
                     (key, fn, value, now, None if ttl is None else now + ttl))
        if ttl is not None:
            puts = self._puts[fn] = self._puts.get(fn, 0) + 1
            if puts % SWEEP_EVERY == 1:  # (the first store too: a restart sweeps)
                conn.execute("DELETE FROM results WHERE fn = ? AND expires < ?", (fn, now))

    def volatile(self, fn: str) -> frozenset[tuple]:
        """The captured state ``fn`` was seen to change (see `_Cached.volatile`)."""
        rows = self._conn().execute("SELECT path FROM volatile WHERE fn = ?", (fn,))
        return frozenset(tuple(json.loads(row[0])) for row in rows)

    def add_volatile(self, fn: str, paths: set[tuple]) -> frozenset[tuple]:
        self._conn().executemany("INSERT OR IGNORE INTO volatile (fn, path) VALUES (?, ?)",
                                 [(fn, json.dumps(list(p))) for p in paths])
        return self.volatile(fn)

    def clear(self, *fns: str) -> int:
        """Delete the rows of the functions named (``fn`` column), or every row."""
        where = f" WHERE fn IN ({', '.join('?' * len(fns))})" if fns else ""
        return self._conn().execute("DELETE FROM results" + where, fns).rowcount


_stores: dict[str, CacheStore] = {}
_lock = threading.Lock()


def _store(path: str | None) -> CacheStore:
    path = os.path.expanduser(path) if path else cache_dir()
    if os.path.isdir(path) or not os.path.splitext(path)[1]:
        path = os.path.join(path, "cache.sqlite3")
    path = os.path.abspath(path)
    with _lock:
        st = _stores.get(path)
        if st is None:
            st = _stores[path] = CacheStore(path)
        return st


_told: set[str] = set()  # cache files already warned about


def _unusable(store: CacheStore, exc: Exception) -> None:
    """A cache file that cannot be read or written (damaged, not SQLite, no
    permission): the call runs uncached, with one warning per file saying what to do."""
    if store.path not in _told:
        _told.add(store.path)
        warnings.warn(f"ember.cache: cannot use the cache file {store.path} "
                      f"({type(exc).__name__}: {exc}); calls run uncached. Delete or move the "
                      "file, or point ember.cache(path=...) or EMBER_CACHE_DIR elsewhere.",
                      stacklevel=4)


# ---- the wrapper ------------------------------------------------------------------------
_GONE = object()


@dataclasses.dataclass(frozen=True)
class _Key:
    """A call's key, and what it was made of (`_Cached.save` may re-make it)."""

    hex: str
    inputs: list[Any]
    parts: list[tuple[tuple, Any]]


class _Cached:
    """What `cache` wraps a function in."""

    def __init__(self, fn: Callable, ttl: float | None, path: str | None) -> None:
        self.fn, self.ttl, self.path = fn, ttl, path
        self.ident = identity(fn)
        self.warned: set[str] = set()
        self._volatile: frozenset[tuple] | None = None

    def store(self) -> CacheStore:
        return _store(self.path)

    def key(self, args: tuple, kwargs: dict) -> _Key | None:
        try:
            inputs = [canonical(list(args)), canonical(kwargs)]
        except Unsupported as exc:
            self._warn(f"an argument of type {exc}")
            return None
        try:
            parts = captured(self.fn)
        except Exception as exc:  # (user code that raises when read): uncached
            self._warn(f"captured state it cannot read ({type(exc).__name__}: {exc})")
            return None
        return _Key(self._hash(inputs, parts), inputs, parts)

    def _hash(self, inputs: list[Any], parts: list[tuple[tuple, Any]]) -> str:
        volatile = self.volatile()
        held = [[list(path), form] for path, form in parts if path not in volatile]
        blob = json.dumps([_VERSION, self.ident, held, *inputs], sort_keys=True)
        return xxhash.xxh3_128_hexdigest(blob.encode())

    def volatile(self) -> frozenset[tuple]:
        """The captured state this function changes when it runs (an accumulator, a
        counter): not an input, so not part of its keys. Learned from its calls and kept
        in the cache file, so a new process hits at once."""
        if self._volatile is None:
            store = self.store()
            try:
                self._volatile = store.volatile(self.ident)
            except Exception as exc:
                _unusable(store, exc)
                self._volatile = frozenset()
        return self._volatile

    def lookup(self, key: _Key) -> Any:
        store = self.store()
        try:
            text = store.get(key.hex, self.ttl)
        except Exception as exc:  # sqlite3.Error, OSError: a damaged or unwritable file
            _unusable(store, exc)
            return UNKNOWN
        if text is None:
            return UNKNOWN
        try:
            return decode(json.loads(text))
        except Exception:  # (Unreadable, or a model class that changed): a miss
            return UNKNOWN

    def save(self, key: _Key, result: Any) -> None:
        """Store ``result`` under ``key``; captured state the call changed joins
        `volatile`, and the entry goes under the key without it (the next call's)."""
        try:
            text = json.dumps(encode(result))
        except Unsupported as exc:
            self._warn(f"a result of type {exc}")
            return
        try:
            after = dict(captured(self.fn))
        except Exception:  # (read before the call, unreadable after it: learn nothing)
            after = dict(key.parts)
        store = self.store()
        try:
            before = dict(key.parts)
            changed = {path for path in before.keys() | after.keys()
                       if before.get(path, _GONE) != after.get(path, _GONE)}
            if not changed <= self.volatile():
                self._volatile = store.add_volatile(self.ident, changed)
            store.put(self._hash(key.inputs, key.parts), self.ident, text, self.ttl)
        except Exception as exc:
            _unusable(store, exc)

    def _warn(self, what: str) -> None:
        if what not in self.warned:
            self.warned.add(what)
            warnings.warn(f"ember.cache: {self.ident.partition('@')[0]} got {what}, which "
                          "the cache cannot hash or store as JSON; such calls run uncached.",
                          stacklevel=4)

    def concrete_args(self, state: Any, args: tuple, kwargs: dict) -> Any:
        """Arguments with tracers replaced by their values, suspending the trace (a
        graph break) where a value is not computed yet."""
        def real(v: Any) -> Any:
            if isinstance(v, Traced):
                known = state.value_of(v._var)
                if known is UNKNOWN or isinstance(known, BaseException):
                    return state.need(v, "an ember.cache lookup needs its arguments")
                return known
            if isinstance(v, str) and state._mark_open in v:  # holds this trace's markers
                from .ir.graph import Var
                from .ir.trace import wrap

                atom = state.atomize(v)
                return real(wrap(state, atom)) if isinstance(atom, Var) else v
            if isinstance(v, (list, tuple)):
                return type(v)(real(x) for x in v)
            if isinstance(v, dict):
                return {k: real(x) for k, x in v.items()}
            return v
        state.guarded = True  # the graph depends on the cache's contents
        return real(args), real(kwargs)


@hint_keywords({"expire": "ttl", "expires": "ttl", "expiry": "ttl", "ttl_seconds": "ttl",
                "max_age": "ttl", "dir": "path", "directory": "path", "cache_dir": "path",
                "file": "path", "filename": "path", "db": "path"})
def cache(fn: Callable | None = None, *, ttl: float | None = None,
          path: str | None = None) -> Any:
    """Cache a function's results on disk: ``cache(fn, ttl=3600)`` or ``@cache(...)``.

    ``ttl``: seconds an entry stays valid (None: forever). ``path``: the SQLite file
    (or its directory); default under the user cache dir, ``EMBER_CACHE_DIR`` overrides.
    The wrapper's ``cache_clear()`` deletes this function's entries.
    """
    from ._reliability import _is_number, is_async

    if ttl is not None and not (_is_number(ttl) and ttl > 0):
        raise ValueError(f"cache() ttl must be positive seconds or None, got {ttl!r}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"cache() path must be a file or folder path, got {path!r}")
    if fn is None:
        return lambda f: cache(f, ttl=ttl, path=path)

    if not callable(fn):
        hint = (f"; to keep results {fn} seconds: cache(fn, ttl={fn}) or @cache(ttl={fn})"
                if _is_number(fn) else "")
        raise TypeError(f"cache() needs a function, got {fn!r}{hint}")

    c = _Cached(fn, ttl, path)

    if is_async(fn):
        @functools.wraps(fn, updated=())
        async def acached(*args: Any, **kwargs: Any) -> Any:
            key = _trace_key(c, args, kwargs)
            if key is None:
                return await fn(*args, **kwargs)
            hit = c.lookup(key)
            if hit is not UNKNOWN:
                _count_hit(c)
                return hit
            state = current_trace()
            if state is not None and key.hex in state.cached:
                return state.cached[key.hex]
            result = await fn(*args, **kwargs)
            if state is None:
                c.save(key, result)
            else:
                state.cached[key.hex] = result
            return result
        wrapper: Any = acached
    else:
        @functools.wraps(fn, updated=())
        def cached(*args: Any, **kwargs: Any) -> Any:
            key = _trace_key(c, args, kwargs)
            if key is None:
                return fn(*args, **kwargs)
            hit = c.lookup(key)
            if hit is not UNKNOWN:
                _count_hit(c)
                return hit
            state = current_trace()
            if state is not None and key.hex in state.cached:  # (see TraceState.cached)
                return state.cached[key.hex]
            result = fn(*args, **kwargs)
            if state is None:
                c.save(key, result)
            else:
                state.cached[key.hex] = result
            return result
        wrapper = cached
    # its rows: this code's (rows an earlier Ember stored hold the name alone)
    wrapper.cache_clear = lambda: c.store().clear(c.ident, c.ident.partition("@")[0])
    return wrapper


def _count_hit(c: _Cached) -> None:
    """A hit is one of the run report's ``cache_hits`` (and a slice of its timeline),
    counted once per call the Python makes on real values: not while jit traces, and
    in a jitted call's check run only once that run completes (it may start over)."""
    if current_trace() is not None:
        return
    from ._models import check_var
    from .backends.record import CallRecord, record
    from .ir.locations import user_location

    now = time.monotonic()
    hit = CallRecord(f"cache/{c.ident.partition('@')[0]}", now, now, cost=0.0, cached=True,
                     location=user_location(3))
    check = check_var.get()
    if check is not None:
        check.hits.append(hit)
    else:
        record(hit)


def _trace_key(c: _Cached, args: tuple, kwargs: dict) -> _Key | None:
    state = current_trace()
    if state is not None:
        args, kwargs = c.concrete_args(state, args, kwargs)
    return c.key(args, kwargs)
