"""A real PostgreSQL server on loopback for the local stack's Prefect server (Debian's package,
`make postgres`): its data folder kept under the stack's state folder, like the S3 server's.

    python -m infra.postgres .slmops/stack/postgres --port 5442   # start one by hand

Prefect's own guidance: SQLite for light use on one server, PostgreSQL (14.9 or later, with the
`pg_trgm` extension) for production and for concurrent work; under load SQLite answers "database
is locked" (`python -m benchmarks.prefect_database` measures both on the same load).

The cluster is initialised once (`initdb`, scram-sha-256 passwords, a password generated into
the folder, readable by its owner alone), listens on 127.0.0.1 only, and holds the database
`prefect`. PostgreSQL refuses to run as root: as root, the server and `initdb` run as the
`postgres` user the Debian package creates, which owns the data folder.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from slmops.errors import SlmopsError

USER = "slmops"
DATABASE = "prefect"
SYSTEM_USER = "postgres"  # who runs the server when slmops runs as root
MIN_VERSION = (14, 9)  # Prefect's minimum (its migrations need pg_trgm too)


class PostgresError(SlmopsError):
    """The PostgreSQL server could not be found, initialised or started."""


def bindir() -> Path:
    """The newest installed PostgreSQL's programs (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).resolve().parent
    raise PostgresError(
        "PostgreSQL is not installed: run `make postgres` (Debian's postgresql and "
        "postgresql-contrib packages), or start the stack with --database sqlite"
    )


def version(bin_dir: Path) -> tuple[int, int]:
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout  # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    match = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if match is None:
        raise PostgresError(f"{bin_dir / 'postgres'} --version printed {out!r}: not PostgreSQL?")
    return int(match[1]), int(match[2] or 0)


def _as_server_user(cmd: list[str]) -> list[str]:
    """`cmd` as the user the server runs as: ourselves, or `postgres` when we are root."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", SYSTEM_USER, "--", *cmd]


def _hand_over(folder: Path) -> None:
    """As root, the folder (and what is in it) belongs to the server's user, who must also
    be able to reach it: every folder above it must let others pass (x)."""
    if os.geteuid() != 0:
        return
    import pwd

    entry = pwd.getpwnam(SYSTEM_USER)
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    for parent in folder.absolute().parents:
        if not os.stat(parent).st_mode & 0o001:
            raise PostgresError(
                f"PostgreSQL runs as the {SYSTEM_USER!r} user (it refuses root), who cannot "
                f"reach {folder}: {parent} does not let others pass. Keep the stack's state "
                "folder somewhere every user may traverse (e.g. under the checkout), or use "
                "--database sqlite"
            )


def password_file(root: Path) -> Path:
    return root / "password"


def data_dir(root: Path) -> Path:
    return root / "data"


def initialise(root: Path) -> bool:
    """A cluster in `root`/data with the slmops superuser and its generated password, once;
    True when made now. A half-made cluster (initdb interrupted) is made again."""
    data, pw = data_dir(root), password_file(root)
    if (data / "PG_VERSION").exists() and pw.exists():
        return False
    bins = bindir()
    found = version(bins)
    if found < MIN_VERSION:
        raise PostgresError(
            f"PostgreSQL {found[0]}.{found[1]} in {bins} is older than {MIN_VERSION[0]}."
            f"{MIN_VERSION[1]}, the oldest Prefect supports: install a newer one"
        )
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(data, ignore_errors=True)
    pw.unlink(missing_ok=True)
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(24))
    os.chmod(root, 0o700)
    _hand_over(root)
    run = subprocess.run(
        _as_server_user(
            [
                str(bins / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                USER,
                "--pwfile",
                str(pw),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-instructions",
            ]
        ),
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise PostgresError(f"initdb failed in {data}:\n{(run.stdout + run.stderr)[-2000:]}")
    return True


def command(root: Path, port: int) -> list[str]:
    """The server in the foreground (the stack keeps its pid), on 127.0.0.1 only; its Unix
    socket in the state folder, not /var/run."""
    return _as_server_user(
        [
            str(bindir() / "postgres"),
            "-D",
            str(data_dir(root)),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={root}",
            "-c",
            "max_connections=200",  # Prefect's pool (server + services) and the workers'
        ]
    )


def url(root: Path, port: int, database: str = DATABASE, driver: str = "asyncpg") -> str:
    """SQLAlchemy's URL of the database (the password read from the folder)."""
    secret = password_file(root).read_text().strip()
    return f"postgresql+{driver}://{USER}:{secret}@127.0.0.1:{port}/{database}"


def ready(root: Path, port: int) -> bool:
    bins = bindir()
    run = subprocess.run(
        [str(bins / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-q"],
        capture_output=True,
    )
    return run.returncode == 0


def ensure_database(root: Path, port: int, database: str = DATABASE) -> None:
    """The database Prefect uses, with pg_trgm (its migrations need it), made if missing."""
    bins = bindir()
    env = {**os.environ, "PGPASSWORD": password_file(root).read_text().strip()}
    base = ["-h", "127.0.0.1", "-p", str(port), "-U", USER]

    def psql(db: str, sql: str) -> str:
        run = subprocess.run(
            [str(bins / "psql"), *base, "-d", db, "-tAc", sql],
            capture_output=True,
            text=True,
            env=env,
        )
        if run.returncode != 0:
            raise PostgresError(f"psql on port {port} failed ({sql!r}): {run.stderr.strip()}")
        return run.stdout.strip()

    if psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{database}'") != "1":
        psql("postgres", f'CREATE DATABASE "{database}"')
    psql(database, "CREATE EXTENSION IF NOT EXISTS pg_trgm")


def wait_ready(root: Path, port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PostgresError(f"PostgreSQL exited with {proc.returncode} while starting")
        if ready(root, port):
            return
        time.sleep(0.3)
    raise PostgresError(f"PostgreSQL on port {port} not ready after {timeout:.0f}s")


def start(root: Path, port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    """A server of its own (not the stack's): initialised if new, started, waited for, the
    database made. Its output goes to `log` (appended), or to ours."""
    initialise(root)
    if log is None:
        proc = subprocess.Popen(command(root, port))
    else:
        with open(log, "ab") as out:
            proc = subprocess.Popen(command(root, port), stdout=out, stderr=out)
    wait_ready(root, port, proc)
    ensure_database(root, port)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="its folder: data/, password")
    parser.add_argument("--port", type=int, default=5442)
    args = parser.parse_args()
    root = args.root.absolute()
    proc = start(root, args.port)
    print(f"PREFECT_API_DATABASE_CONNECTION_URL={url(root, args.port)}", flush=True)
    proc.wait()


if __name__ == "__main__":
    main()
