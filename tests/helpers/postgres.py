"""A throw-away PostgreSQL server from the machine's packages, run as a child of the test process
(it dies with it). PostgreSQL refuses to run as root, so under root it runs as `postgres`."""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.common.lifeline import PR_SET_PDEATHSIG

_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: run `make system-packages` (apt-get install "
                           "postgresql)")
    return str(found)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """A running server; yields its URL (database `anyanomaly`, no password, 127.0.0.1 only)."""
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def as_server_user() -> None:
        if user is not None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # after setuid, which clears it

    home = Path(tempfile.mkdtemp(prefix="anyanomaly-pg-"))
    if user is not None:
        os.chown(home, user.pw_uid, user.pw_gid)
    data = home / "data"
    subprocess.run([_binary("initdb"), "-D", str(data), "-A", "trust", "-U", "anyanomaly", "--no-sync"],
                   check=True, capture_output=True, preexec_fn=as_server_user)
    port = _free_port()
    with open(home / "server.log", "wb") as log:  # the server keeps its own copy of the descriptor
        server = subprocess.Popen(
            [_binary("postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(home),
             "-F", "-c", "full_page_writes=off"],
            stdout=subprocess.DEVNULL, stderr=log, preexec_fn=as_server_user)
    url = f"postgresql://anyanomaly@127.0.0.1:{port}/postgres"
    try:
        _wait_ready(url, server, home)
        yield url
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(home, ignore_errors=True)


def _wait_ready(url: str, server: subprocess.Popen[bytes], home: Path) -> None:
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited: {(home / 'server.log').read_text()[-2000:]}")
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def fresh_database(url: str, name: str) -> str:
    """A new empty database on the server at `url`; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + f"/{name}"
