"""Where a trace store lives: an SQLite file path or a PostgreSQL URL, and how to show it without its secrets."""

from __future__ import annotations

import os
import pathlib
import re

DEFAULT_DB = "tracer.db"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

# user:password@ in a URL, and password=... in a libpq key/value string (quoted or not)
_URL_PASSWORD = re.compile(r"(?i)\b(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@")
_KV_PASSWORD = re.compile(r"(?i)(?<![?&])\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&\s]*")
MASK = "***"


def is_postgres_url(db: object) -> bool:
    """Whether `db` names a PostgreSQL server (a `postgresql://` or `postgres://` URL)."""
    return isinstance(db, str) and db.strip().lower().startswith(POSTGRES_SCHEMES)


def resolve_path(path: str | os.PathLike | None) -> pathlib.Path | str:
    """The store address: the argument, else $TRACER_DB, else `tracer.db`; a PostgreSQL URL stays a string."""
    db = path if path is not None else os.environ.get("TRACER_DB") or DEFAULT_DB
    return db.strip() if isinstance(db, str) and is_postgres_url(db) else pathlib.Path(db)


def store_key(address: pathlib.Path | str) -> str:
    """What identifies a store within a process: the resolved file, or the URL."""
    return address if isinstance(address, str) else str(address.resolve())


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every password hidden: in URLs, in `password=` settings, and each of `secrets` verbatim."""
    text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    text = _KV_PASSWORD.sub(rf"\1{MASK}", text)
    text = _QUERY_PASSWORD.sub(rf"\1{MASK}", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def display(db: str | os.PathLike) -> str:
    """How a store is named in messages, logs and reports (a URL without its password)."""
    return redact(str(db))
