"""A throwaway PostgreSQL server for the tests: a new cluster (initdb) in a temporary folder, started on a
free port on 127.0.0.1 with a readiness deadline (a connection is tried until it succeeds; no fixed sleep),
stopped and removed at the end.

The server binaries are found on PATH, else in ``pg_config --bindir`` (Debian keeps them out of PATH; its
``postgresql`` package provides that ``pg_config``). PostgreSQL refuses to run as root: as root the cluster
belongs to the unprivileged ``postgres`` user (Debian's package creates it), else ``nobody``, and its folder
is made outside pytest's root-only temporary tree so that user can enter it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "riskstream"


def bindir() -> Path | None:
    """The folder holding initdb and postgres, or None when the server is not installed."""
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "postgres").is_file():
        return Path(initdb).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and (Path(out) / "initdb").is_file() and (Path(out) / "postgres").is_file():
            return Path(out)
    return None


def run_as() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as when we are root; None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists for PostgreSQL")


def free_port() -> int:
    from riskstream.ops.procs import free_port as fp

    return fp()


@dataclass
class PgServer:
    bin: Path
    root: Path
    port: int
    proc: subprocess.Popen
    account: pwd.struct_passwd | None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: sessions are ended, the cluster closed cleanly
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def start(deadline_s: float = 90.0) -> PgServer:
    import psycopg

    bin_ = bindir()
    if bin_ is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, postgres)")
    account = run_as()
    root = Path(tempfile.mkdtemp(prefix="riskstream-pg-"))
    data = root / "data"
    as_user = {}
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    try:
        subprocess.run([str(bin_ / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                        "--locale=C", "--no-sync"], check=True, capture_output=True, text=True, cwd=root, env=env,
                       timeout=300, **as_user)
    except subprocess.CalledProcessError as e:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({e.returncode}): {e.stderr[-2000:]}") from None
    last = ""
    for _attempt in range(3):  # the free port may be taken between choosing it and the server binding it
        port = free_port()
        log = open(root / "server.log", "ab")
        # a test cluster: no fsync (nothing here must survive a power cut; the consumer's crash test kills the
        # consumer, not the server), TCP on loopback only, no Unix socket
        proc = subprocess.Popen([str(bin_ / "postgres"), "-D", str(data), "-p", str(port),
                                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                                 "-c", "fsync=off", "-c", "full_page_writes=off",
                                 "-c", "synchronous_commit=off", "-c", "max_connections=100"],
                                stdout=log, stderr=log, cwd=root, env=env, start_new_session=True, **as_user)
        log.close()
        srv = PgServer(bin_, root, port, proc, account)
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline_s:
            if proc.poll() is not None:
                break
            try:
                with psycopg.connect(srv.url(), connect_timeout=2) as c:
                    c.execute("SELECT 1")
                return srv
            except psycopg.OperationalError as e:
                last = str(e)
                time.sleep(0.1)
        last = f"{last}\n{srv.log_tail()}"
        if proc.poll() is None:  # not ready by the deadline: give up on it
            proc.kill()
            proc.wait(timeout=30)
            break
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not accept connections within {deadline_s:.0f} s: {last[-3000:]}")
