"""What a provider reads from the environment that may be secret — API keys and base
URLs — checked before anything is sent, and what a message may show of them: keys,
URL user info and query values never appear in errors or logs."""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote, urlsplit

from ..errors import ConfigurationError

__all__ = ["scrub", "safe_url", "url_secrets", "check_url", "clean_key"]

_SECRET_RE = re.compile(r"\b(sk-(?:ant-)?[A-Za-z0-9_\-]{8,})")
_BEARER_RE = re.compile(r"(?i)\b(bearer\s+|x-api-key[:=]\s*)[^\s,;'\"]+")
# what an HTTP header or URL cannot carry: whitespace, control and non-ASCII characters
_NOT_VISIBLE_RE = re.compile(r"[^\x21-\x7e]")


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` without the given secrets or anything shaped like an API key."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _SECRET_RE.sub("sk-***", text)
    return _BEARER_RE.sub(lambda m: m.group(1) + "***", text)



def safe_url(url: str | None) -> str:
    """A URL without user info or query (they may hold credentials). Malformed URLs
    too (no scheme, a bad port): they are shown in configuration errors."""
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    # user info ends at the last "@" (a pasted token may hold "/", which RFC 3986 does
    # not allow there: splitting at the first "/" first left it in the "path")
    rest = rest.rpartition("@")[2]
    authority, slash, path = rest.partition("/")
    return f"{scheme}{sep}{authority}{slash}{path}"


def url_secrets(url: str | None) -> list[str]:
    """The parts of a URL that may be credentials (user info, query values), as
    written and decoded: `scrub` takes them out of server text."""
    if not url:
        return []
    rest = url.partition("://")[2] or url
    rest, _, query = rest.partition("?")
    userinfo = rest.split("#")[0].rpartition("@")[0]  # (to the last "@": see safe_url)
    user, _, password = userinfo.partition(":")
    # (a user name alone may be a token; next to a password it is just a name)
    found = [password or user]
    found += [pair.partition("=")[2] for pair in query.split("#")[0].split("&")]
    # (short values, "v=2", are no credentials, and scrubbing them would garble text)
    return [s for f in found if f and len(f) >= 5 for s in {f, unquote(f)}]


@functools.lru_cache(maxsize=32)
def check_url(value: str, env: str, example: str, default_scheme: str | None = None) -> str:
    """``value``, read from the variable ``env``, as an http(s) URL: surrounding
    whitespace dropped, the scheme lower-cased (``default_scheme`` is added to a bare
    host:port). Anything else is a ConfigurationError naming ``env`` and showing
    ``example`` (the value is shown without credentials)."""
    url = value.strip()
    if default_scheme and "://" not in url:
        url = f"{default_scheme}://{url}"
    scheme, sep, rest = url.partition("://")
    problem = None
    if _NOT_VISIBLE_RE.search(url):
        problem = "it contains whitespace, control or non-ASCII characters"
    elif "/" in re.split(r"[?#]", rest, maxsplit=1)[0].rpartition("@")[0]:
        problem = "its user name or password holds a '/' (write it as %2F)"
    elif not sep:
        problem = "it has no scheme"
    elif scheme.lower() not in ("http", "https"):
        problem = f"its scheme is {scheme!r}, not http or https"
    else:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError as exc:
            problem = "its port is not a number from 1 to 65535" if "port" in str(exc).lower() \
                else "its host is malformed"
        else:
            if not parts.hostname:
                problem = "it has no host"
    if problem:
        what = "host:port or URL" if default_scheme else "http:// or https:// URL"
        raise ConfigurationError(
            f"{env}={safe_url(value.strip())!r} is not a valid {what}: {problem}. Set it "
            f"to one like `export {env}={example}`.")
    return scheme.lower() + sep + rest


def clean_key(value: str, env: str) -> str:
    """An API key read from ``env`` without surrounding whitespace (a key read from a
    file ends with a newline). One that still holds whitespace, control or non-ASCII
    characters cannot travel in an HTTP header: a ConfigurationError naming ``env``
    (never showing the key)."""
    key = value.strip()
    if _NOT_VISIBLE_RE.search(key):
        raise ConfigurationError(
            f"{env} holds whitespace, control or non-ASCII characters inside the key, which "
            f"cannot be sent in an HTTP header. Set {env} to the key alone (check for a "
            "second line or a stray quote where it was copied or read from).")
    return key
