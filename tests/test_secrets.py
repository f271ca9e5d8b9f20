"""Issue 22, case 4: a store URL's password is never shown, for any URL, valid or malformed, encoded or not.

The URLs (tests/faultkit.py, shared with the fault benchmark) point where nothing listens (port 1 of
127.0.0.1), so a URL libpq accepts fails at once with "cannot reach";
a malformed one fails before libpq sees it or with libpq's message, cleaned. Every output a user
can see is checked: the message, the formatted traceback with anything chained to it, the log,
the key and the shown name; and the CLI's stderr for a few URLs (subprocesses).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faultkit import MALFORMED_URLS, opening_outputs, subprocess_env
from tracer_core.errors import StoreError
from tracer_core.storage._postgres import PostgresBackend
from tracer_core.store_address import resolve_path, store_key


@pytest.mark.parametrize("url, pieces, says", MALFORMED_URLS)
def test_case4_no_piece_of_a_password_is_shown_for_a_malformed_url(url: str, pieces: list[str], says: str) -> None:
    """Case 4 (fails at 19ccbfc: spaces, unknown options and an unclosed bracket end in an AttributeError
    chained to libpq's message holding the password; an unencoded '@' shows half of it)."""
    error, texts = opening_outputs(url)
    assert isinstance(error, StoreError) and says in str(error) and "\n" not in str(error)
    assert error.__cause__ is None and error.__context__ is None  # nothing of libpq's is chained
    for text in texts:
        for piece in pieces:
            assert piece not in text, (piece, text)


def test_case4_the_key_of_a_url_holds_no_password_yet_tells_passwords_apart() -> None:
    """Case 4 (fails at 19ccbfc: `TraceStore(url).key` was the URL itself)."""
    one, two = (store_key(resolve_path(f"postgresql://tracer:{pw}@db.internal/app")) for pw in ("Qx7wZk9v", "Zk9vQx7w"))
    assert "Qx7wZk9v" not in one and "Zk9vQx7w" not in two and one != two
    assert one.startswith("postgresql://tracer:***@db.internal/app#")
    assert resolve_path(one) == "postgresql://tracer:Qx7wZk9v@db.internal/app"  # the key stands for its URL here


def test_case4_a_backend_keeps_its_password_only_where_nothing_prints_it() -> None:
    """Case 4: every attribute of the PostgreSQL backend a user could print is free of the password."""
    backend = PostgresBackend("postgresql://tracer:Qx7w%40Zk9v@127.0.0.1:1/postgres?sslpassword=Ke4yPw&sslmode=disable")
    shown = repr(vars(backend)) + backend.name + str(backend.spill_path)
    assert "Qx7w" not in shown and "Zk9v" not in shown and "Ke4yPw" not in shown and "***" in backend.name


TOKEN = st.from_regex(r"[A-Z]{2}[0-9]{2}[a-z]{2}", fullmatch=True)  # never part of any message by chance
SPECIAL = st.sampled_from([" ", "\t", "@", ":", "/", "%", "%40", "%2F", "%zz", "%4", "%20", "%ff", "?", "#", "[", "]", "&",
                           "=", "'", "\\", '"', "+", "$", "é", "password="])
PASSWORD = st.lists(st.tuples(TOKEN, st.lists(SPECIAL, max_size=2).map("".join)), min_size=1, max_size=4)
TEMPLATE = st.sampled_from([
    "postgresql://tracer:{pw}@127.0.0.1:1/postgres",
    "postgres://tracer:{pw}@[::1]:1/db?sslmode=disable",
    "postgresql://tracer:{pw}@[::1:1/db",
    "postgresql://tracer:{pw}@127.0.0.1:99999/db",
    "postgresql://tracer:{pw}@127.0.0.1:port/db",
    "postgresql://tracer:{pw}@:1/db",
    "postgresql://tracer:{pw}@127.0.0.1:1/db?nosuchoption=1",
    "postgresql://tracer@127.0.0.1:1/db?password={pw}",
    "postgresql:tracer:{pw}@127.0.0.1:1/db",
])


@settings(max_examples=100, deadline=None)
@given(parts=PASSWORD, template=TEMPLATE)
def test_case4_no_generated_password_is_ever_shown(parts: list[tuple[str, str]], template: str) -> None:
    """Case 4, as a property: whatever the password holds, none of its words reaches an output."""
    url = template.format(pw="".join(token + special for token, special in parts))
    error, texts = opening_outputs(url)
    assert isinstance(error, StoreError), (url, error)
    for text in texts:
        for token, _ in parts:
            assert token not in text, (url, text)


CLI_URLS = [
    ("postgresql://tracer:Pa ss W0rd@127.0.0.1:55432/postgres", ["Pa ss W0rd", "W0rd"]),
    ("postgresql://tracer:Qx7w@Zk9v@127.0.0.1:55432/postgres", ["Qx7w", "Zk9v"]),
    ("postgresql://tracer:Qx7wZk9v@[::1:55432/postgres", ["Qx7wZk9v"]),
    ("postgresql://tracer:Qx7wZk9v@127.0.0.1:1/postgres?bogus=1", ["Qx7wZk9v"]),
    ("postgresql://tracer:Qx7wZk9v@127.0.0.1:1/postgres", ["Qx7wZk9v"]),
]


@pytest.mark.slow
def test_case4_the_cli_says_one_clear_line_for_a_bad_url() -> None:
    """Case 4 (fails at 19ccbfc: `tracer status --db URL` ended in a traceback showing the password)."""
    script = "import sys; from tracer_core.cli.commands import main; sys.exit(main())"
    for url, pieces in CLI_URLS:
        done = subprocess.run([sys.executable, "-c", script, "status", "--db", url], capture_output=True, text=True,
                              env=subprocess_env(), timeout=60)
        assert done.returncode == 1, (url, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "postgresql://tracer:***@" in lines[0], lines
        assert not any(piece in done.stderr + done.stdout for piece in pieces), done.stderr
