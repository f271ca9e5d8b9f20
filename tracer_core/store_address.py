"""Where a trace store lives: an SQLite file path or a PostgreSQL URL, and how to show it without its secrets.

A URL's secrets are found before anything parses it, so a malformed URL is hidden as well as a
valid one: its credentials are whatever lies between `://` and the last `@`, its password what
follows the first `:` in them; `password=` and `sslpassword=` query values are secrets too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pathlib
import re
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote

DEFAULT_DB = "tracer.db"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

_SCHEME = re.compile(r"(?i)\s*(postgres(?:ql)?:)(//)?")
# user:password@ in a URL inside free text, and password=... in a libpq key/value string (quoted or not)
_URL_PASSWORD = re.compile(r"(?i)\b(postgres(?:ql)?:/*[^:/@\s]*):[^@\s]*@")
_KV_PASSWORD = re.compile(r"(?i)(?<![?&])\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:ssl)?password=)([^&\s]*)")
# within one URL: up to the next `&name=` of a libpq setting (lower-case words), so an '&' in it is hidden too
_URL_QUERY_PASSWORD = re.compile(r"([?&](?i:(?:ssl)?password)=)(.*?)(?=&[a-z_]+=|$)", re.DOTALL)
MASK = "***"
T = TypeVar("T")
_PROCESS_KEY = os.urandom(16)  # keys of URLs are keyed digests: nothing outside this process can invert them
_URLS_BY_KEY: dict[str, Secret[str]] = {}


class Secret(Generic[T]):
    """A value that never shows itself (repr and str are masked); `reveal()` gives it to the one who needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class StoreURL:
    """A PostgreSQL URL taken apart without parsing it: how to show it, what to hide, and what is wrong with it."""

    shown: str  # the URL with every password replaced by ***
    secrets: Secret[tuple[str, ...]]  # every form of every password in it (as written, percent-decoded, libpq-quoted)
    problem: str | None  # why libpq would read it otherwise than shown (it must not see it then), or None
    url: Secret[str]


def split_url(url: str) -> StoreURL:
    """`url` taken apart by the rules of this module's docstring; never raises, never echoes a secret."""
    match = _SCHEME.match(url)
    scheme, slashes = (match.group(1).lower(), match.group(2) or "") if match else ("", "")
    rest = url[match.end():] if match else url
    at = rest.rfind("@")
    userinfo = rest[:max(at, 0)]
    colon = userinfo.find(":")
    hidden = [(colon + 1, at)] if colon >= 0 else []
    hidden += [m.span(2) for m in _URL_QUERY_PASSWORD.finditer(rest)]
    problem = None
    if not slashes:
        problem = "a PostgreSQL URL starts with postgresql:// (or postgres://)"
    elif "@" in userinfo:
        problem = ("it has more than one '@' (an '@' in the user name, the password or the query must be "
                   "percent-encoded as %40)")
    elif "/" in userinfo:
        problem = "its user name or password holds a '/' (percent-encode it as %2F)"
    elif any("&" in rest[a:b] for a, b in hidden[1 if colon >= 0 else 0:]):
        problem = "a password in its query holds an '&' (percent-encode it as %26)"
    secrets = Secret(_forms([rest[a:b] for a, b in hidden]))
    # libpq reads only a lower-case scheme as a URL (anything else as `key=value` words)
    return StoreURL(f"{scheme}{slashes}{_masked(rest, hidden)}", secrets, problem, Secret(f"{scheme}{slashes}{rest}".strip()))


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each run of characters covered by `spans` (overlapping or touching ones merged) replaced by ***."""
    out, shown_to = [], 0
    for a, b in sorted(span for span in spans if span[1] > span[0]):
        if a > shown_to:
            out += [text[shown_to:a], MASK]
        elif not out:
            out.append(MASK)
        shown_to = max(shown_to, b)
    return "".join(out) + text[shown_to:]


def _forms(secrets: list[str]) -> tuple[str, ...]:
    """Each secret as written, percent-decoded and quoted for a libpq string; longest first, so none is cut."""
    forms = set()
    for secret in secrets:
        for form in (secret, unquote(secret)):
            forms |= {form, form.replace("\\", "\\\\").replace("'", "\\'")}
    return tuple(sorted((f for f in forms if f), key=len, reverse=True))


def is_postgres_url(db: object) -> bool:
    """Whether `db` names a PostgreSQL server (a `postgresql:` or `postgres:` URL, well formed or not)."""
    return isinstance(db, str) and _SCHEME.match(db) is not None


def resolve_path(path: str | os.PathLike | None) -> pathlib.Path | str:
    """The store address: the argument, else $TRACER_DB, else `tracer.db`; a PostgreSQL URL stays a string.

    A `store_key` of a URL stands for that URL within the process that made it."""
    db = path if path is not None else os.environ.get("TRACER_DB") or DEFAULT_DB
    if isinstance(db, str) and db in _URLS_BY_KEY:
        return _URLS_BY_KEY[db].reveal()
    return db.strip() if isinstance(db, str) and is_postgres_url(db) else pathlib.Path(db)


def store_key(address: pathlib.Path | str) -> str:
    """What identifies a store within a process: the resolved file, or the URL without its password plus a
    digest of the whole URL keyed by a secret of this process (two passwords, two keys; neither shown)."""
    if not isinstance(address, str):
        return str(address.resolve())
    digest = hmac.new(_PROCESS_KEY, address.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:16]
    key = f"{split_url(address).shown}#{digest}"
    _URLS_BY_KEY[key] = Secret(address)
    return key


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every password hidden: in URLs, in `password=` settings, and each of `secrets` verbatim."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    text = _KV_PASSWORD.sub(rf"\1{MASK}", text)
    return _QUERY_PASSWORD.sub(rf"\1{MASK}", text)


def display(db: str | os.PathLike) -> str:
    """How a store is named in messages, logs and reports (a URL without its password)."""
    text = str(db)
    return split_url(text).shown if is_postgres_url(text) else redact(text)
