"""Shared fixtures. The broker is real (Kafka from Maven jars, KRaft, loopback), started once per test
session on a free port under a temporary folder, with a readiness deadline; it is stopped at the end."""

from __future__ import annotations

import os

import pytest

# PyFlink runs a pandas UDF's Python worker inside the client process on a MiniCluster ("loopback"), and
# that worker copies the job's settings into os.environ, PYFLINK_GATEWAY_DISABLED among them: every later
# subprocess of the test session (the demo, the CLI) would then refuse to start a gateway. Tests run the
# worker as its own process, as a cluster does.
os.environ.setdefault("_python_worker_execution_mode", "process")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    from riskstream.ops import broker
    from riskstream.ops.procs import free_port

    root = tmp_path_factory.mktemp("kafka")
    lay = broker.up(port=free_port(), root=root, deadline_s=120)
    try:
        yield lay.bootstrap
    finally:
        broker.down(root=root)
        assert broker.read_pid(lay) is None, "the broker process outlived `down`"


@pytest.fixture(scope="session")
def labelled_stream():
    """A small labelled stream with malformed records mixed in (seeded, reproducible)."""
    from riskstream.generator import TrafficGenerator

    return list(TrafficGenerator(seed=11, bad_share=0.03, sim_rate=2.0).generate(1500))


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server (a new cluster in a temporary folder, loopback, free port), stopped at the end.
    Skipped only when the server binaries are not installed."""
    from tests import pg_server as pg

    if pg.bindir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) are neither on PATH nor in `pg_config --bindir`: "
                    "install Debian's postgresql package (.ci/run does)")
    srv = pg.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def pg_url(pg_server):
    """A new, empty database on the test server, as a postgresql:// URL."""
    import secrets

    return pg_server.create_database("t_" + secrets.token_hex(6))
