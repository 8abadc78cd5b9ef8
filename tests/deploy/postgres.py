"""A throwaway PostgreSQL cluster for a test session (the Airflow deployment's database).

:func:`cluster` finds PostgreSQL's server programs (Debian's /usr/lib/postgresql/<major>/bin, or
``initdb`` on PATH), installs them with apt-get when they are missing and that is allowed (root,
and ``CI`` or ``RUNBRIDGE_INSTALL_POSTGRES=1`` set), creates a cluster in a temporary directory
(``initdb``, trust authentication on loopback only, durability off: the data is thrown away),
starts ``postgres`` on a free loopback port with its socket in that directory, yields a
:class:`Cluster` (``url`` for SQLAlchemy) and, at the end, stops the server and deletes the
directory. PostgreSQL refuses to run as root: as root the programs run as the ``postgres`` user
(``runuser``), which owns the directory.

A cluster whose session was SIGKILLed cannot be stopped by it (the parent-death signal does not
survive ``runuser``'s change of user... but ``runuser`` itself gets it and passes SIGTERM on);
whatever is left, a later :func:`cluster` stops and deletes: each cluster's directory names the
pid of the session that made it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.processes import spawn

__all__ = ["Cluster", "PostgresUnavailable", "cluster", "find_bin"]

PREFIX = "runbridge-pg-"
INSTALL = "apt-get update && apt-get install -y postgresql"
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "300",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
}
"""Thrown-away data: no durability. ``max_connections``: every Airflow process holds a pool."""


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server programs are missing and may not be installed here (the message
    says how to install them), or they could not start a cluster."""


@dataclass
class Cluster:
    directory: Path
    port: int
    bin: Path
    process: subprocess.Popen[bytes]
    user: str = "postgres"
    database: str = "postgres"

    @property
    def url(self) -> str:
        """SQLAlchemy's URL (psycopg2; Airflow derives its async asyncpg URL from it)."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"


def find_bin() -> Path | None:
    """The directory of ``initdb`` and ``postgres`` (the newest Debian major first)."""
    majors = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if majors:
        return Path(majors[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _install_allowed() -> bool:
    return os.geteuid() == 0 and bool(
        os.environ.get("CI") or os.environ.get("RUNBRIDGE_INSTALL_POSTGRES") == "1"
    )


def ensure_installed() -> Path:
    found = find_bin()
    if found is not None:
        return found
    if not _install_allowed():
        raise PostgresUnavailable(
            "PostgreSQL's server programs (initdb, postgres) are not installed; install them "
            f"with `sudo sh -c '{INSTALL}'`, or run as root with RUNBRIDGE_INSTALL_POSTGRES=1 "
            "(or CI=1) and the tests install them, or use RUNBRIDGE_AIRFLOW_DB=sqlite"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["sh", "-c", INSTALL], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    found = find_bin()
    if done.returncode or found is None:
        raise PostgresUnavailable(
            f"`{INSTALL}` failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
        )
    return found


def _as_owner(owner: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


def _owner() -> str | None:
    """Who runs the server: ``postgres`` when we are root (PostgreSQL refuses root), else us."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root and there is no `postgres` user to run PostgreSQL as "
            f"(`{INSTALL}` creates it)"
        ) from None
    return "postgres"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _kill_server(data: Path, sig: int = signal.SIGQUIT) -> None:
    """SIGQUIT: immediate shutdown (the data is thrown away)."""
    pid = _postmaster_pid(data)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def sweep(root: Path | None = None) -> list[Path]:
    """Stop and delete the clusters left by sessions that are gone; return their directories."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for directory in root.glob(f"{PREFIX}*"):
        try:
            owner = int((directory / "session.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        _kill_server(directory / "data")
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


@contextlib.contextmanager
def cluster(start_timeout: float = 120.0) -> Iterator[Cluster]:
    """A running cluster for the ``with`` block (see the module's docstring)."""
    bin_dir = ensure_installed()
    owner = _owner()
    sweep()
    directory = Path(tempfile.mkdtemp(prefix=PREFIX))
    (directory / "session.pid").write_text(str(os.getpid()))
    data = directory / "data"
    process: subprocess.Popen[bytes] | None = None
    try:
        os.chmod(directory, 0o755)  # the server's user reaches its data and socket through it
        if owner:
            shutil.chown(directory, user=owner)
        init = subprocess.run(
            _as_owner(
                owner,
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "--no-instructions",
                    "-E",
                    "UTF8",
                ],
            ),
            capture_output=True,
            text=True,
            timeout=start_timeout,
            check=False,
        )
        if init.returncode:
            raise PostgresUnavailable(f"initdb failed:\n{(init.stdout + init.stderr)[-3000:]}")
        port = _free_port()
        argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port)]
        argv += ["-k", str(directory)]
        for name, value in SETTINGS.items():
            argv += ["-c", f"{name}={value}"]
        # runuser stays the child's parent and passes a SIGTERM on: its death signal is what
        # stops the server when the session is SIGKILLed
        process = spawn(
            _as_owner(owner, argv), directory / "postgres.log", death_signal=signal.SIGTERM
        )
        running = Cluster(directory, port, bin_dir, process)
        _wait_ready(running, time.monotonic() + start_timeout)
        yield running
    finally:
        if process is not None:
            _kill_server(data)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                _kill_server(data, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(running: Cluster, deadline: float) -> None:
    while True:
        if running.process.poll() is not None:
            raise PostgresUnavailable(
                f"postgres exited ({running.process.returncode}):\n"
                + running.log.read_text(errors="replace")[-3000:]
            )
        ready = subprocess.run(
            [str(running.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(running.port)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if ready.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise PostgresUnavailable(
                f"postgres did not accept connections (pg_isready {ready.returncode}):\n"
                + running.log.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.2)
