"""A throwaway PostgreSQL cluster in a temporary directory (initdb + pg_ctl of Debian's `postgresql`),
listening on 127.0.0.1 at a free port with a password, for the tests and the benchmark."""

from __future__ import annotations

import glob
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from urllib.parse import quote

USER = "tracer"


def server_bin() -> pathlib.Path:
    """The newest installed server's bin directory (`make sysdeps` installs one)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[-3]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql: run `make sysdeps`")
    return pathlib.Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayCluster:
    """initdb into a new temporary directory, start, stop, and URLs for a fresh schema each. As root, the server runs as `postgres`."""

    def __init__(self) -> None:
        # its own directory straight under the temporary root: the `postgres` user must reach it
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="tracer-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(8)  # a secret the redaction tests look for
        self._bin = server_bin()
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_postgres, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr or done.stdout}")

    def init(self) -> ThrowawayCluster:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(self._bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8", "--locale=C")
        pwfile.unlink()
        return self.start()

    def start(self) -> ThrowawayCluster:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def pids(self) -> list[int]:
        """The running server's processes: the postmaster (postmaster.pid) and its children."""
        main = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the process ended meanwhile
            if int(fields[1]) == main:
                children.append(int(stat.parent.name))
        return [main, *children]

    def pause(self) -> None:
        """Stop every server process (SIGSTOP): connections and queries hang, nothing is refused."""
        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let the processes `pause` stopped run again (SIGCONT)."""
        for pid in self.pids():
            os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        """Stop the server if it runs, and delete the cluster."""
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, schema: str | None = None) -> str:
        """The URL of the `postgres` database, with its tables in `schema` (created here) if given."""
        base = f"postgresql://{USER}:{quote(self.password)}@127.0.0.1:{self.port}/postgres"
        if schema is None:
            return base
        import psycopg

        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return f"{base}?options=-csearch_path%3D{schema}"

    def fresh_url(self) -> str:
        """A URL of a new empty schema: one store that no other test sees."""
        return self.url("t_" + uuid.uuid4().hex[:12])
