"""The local broker (``riskstream stack``): one Apache Kafka broker in KRaft mode on 127.0.0.1, run from Maven jars.

Configured for transactions on a single node (replication factor and min ISR of the transaction state
log are 1, otherwise transactional producers hang in ``initTransactions``), with
``transaction.max.timeout.ms`` at 15 min: Flink's exactly-once sink must use a timeout below it.
The broker runs in its own process group; ``down`` kills that group, so no process is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..topics import BROKER_MAX_TRANSACTION_TIMEOUT_MS
from .procs import free_port, pid_alive, port_in_use


@dataclass(frozen=True)
class StackLayout:
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def port_file(self) -> Path:
        return self.root / "broker.port"

    @property
    def log_file(self) -> Path:
        return self.root / "broker.log"

    @property
    def props(self) -> Path:
        return self.root / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def layout(port: int = 9092, root: Path | None = None) -> StackLayout:
    return StackLayout(root=Path(root) if root else paths.home() / "kafka", port=port)


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise RuntimeError("java is not on PATH (Kafka 4 needs Java 17+); install a JDK or set JAVA_HOME")
    return java


def server_properties(lay: StackLayout, controller_port: int, partitions: int) -> str:
    return f"""# written by riskstream stack up
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{lay.port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{lay.port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={lay.data}
num.partitions={partitions}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
transaction.max.timeout.ms={BROKER_MAX_TRANSACTION_TIMEOUT_MS}
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# restart after a kill as fast as after a clean stop: a killed broker never unregistered, and the controller
# refuses the new incarnation (DUPLICATE_BROKER_REGISTRATION, retried every 2 s) until the old one's session
# expires (default 9 s). 3 s: a stall (GC, SIGSTOP) longer than that fences the node until its next heartbeat
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
# log recovery after an unclean stop (no .kafka_cleanshutdown): segments are re-read, indexes rebuilt
num.recovery.threads.per.data.dir=2
log.segment.bytes=67108864
log.retention.hours=168
"""


LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
"""


def read_pid(lay: StackLayout) -> int | None:
    try:
        pid = int(lay.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def broker_ready(bootstrap: str, timeout_s: float = 2.0, client_props: dict | None = None) -> bool:
    """True once the broker answers a metadata request (not merely accepts TCP)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    # kafka-python's admin client blocks ~30 s when nothing listens: probe TCP first (fails in ms)
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                break
        except (OSError, ValueError):
            continue
    else:
        return False
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                                 **(client_props or {}))
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def up(port: int = 9092, partitions: int = 2, deadline_s: float = 90.0, root: Path | None = None,
       out=sys.stdout) -> StackLayout:
    """Start the broker (formatting its storage on first use) and wait until it serves metadata."""
    from .jars import resolve

    lay = layout(port, root)
    pid = read_pid(lay)
    if pid:
        running_port = int(lay.port_file.read_text()) if lay.port_file.exists() else port
        lay = layout(running_port, root)
        if broker_ready(lay.bootstrap):
            print(f"[stack] broker already running (pid {pid}) on {lay.bootstrap}", file=out)
            return lay
    resolve(["kafka"], out=out)
    jars_dir = paths.kafka_jars_dir()
    lay.root.mkdir(parents=True, exist_ok=True)
    t_port = time.monotonic()
    # a killed broker's threads close its sockets a moment after its pid turns into a zombie: wait briefly
    while port_in_use(port) and time.monotonic() - t_port < (5.0 if lay.pid_file.exists() else 0.0):
        time.sleep(0.05)  # polling interval, under the deadline above
    if port_in_use(port):
        raise RuntimeError(f"port {port} on 127.0.0.1 is taken by another process; "
                           "pass --port (or set RISKSTREAM_KAFKA_PORT) to use another one")
    controller_port = free_port()
    lay.props.write_text(server_properties(lay, controller_port, partitions))
    log4j = lay.root / "log4j2.properties"
    log4j.write_text(LOG4J2.format(log=lay.log_file))
    java = _java()
    cp = str(jars_dir / "*")
    jvm = ["-Xms256m", "-Xmx1g", f"-Dlog4j2.configurationFile={log4j}", "-Dkafka.logs.dir=" + str(lay.root)]
    if not (lay.data / "meta.properties").exists():
        if lay.data.exists():
            shutil.rmtree(lay.data)
        cluster_id = uuid.uuid4().hex[:22]
        fmt = subprocess.run(
            [java, *jvm, "-cp", cp, "kafka.tools.StorageTool", "format", "--standalone",
             "-t", _kraft_cluster_id(cluster_id), "-c", str(lay.props)],
            capture_output=True, text=True)
        if fmt.returncode != 0:
            raise RuntimeError(f"formatting the KRaft storage failed:\n{fmt.stdout}\n{fmt.stderr}")
    with open(lay.root / "broker.stdout", "ab") as sink:
        proc = subprocess.Popen([java, *jvm, "-cp", cp, "kafka.Kafka", str(lay.props)],
                                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    lay.pid_file.write_text(str(proc.pid))
    lay.port_file.write_text(str(port))
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the broker exited with code {proc.returncode} during start-up; "
                               f"see {lay.log_file} and {lay.root / 'broker.stdout'}")
        if broker_ready(lay.bootstrap, timeout_s=1.0):
            break
        if time.monotonic() - t0 > deadline_s:
            down(root=lay.root, out=out)
            raise TimeoutError(f"the broker did not serve metadata within {deadline_s:.0f}s; see {lay.log_file}")
        time.sleep(0.2)  # polling interval of the readiness loop, not synchronisation
    print(f"[stack] broker up on {lay.bootstrap} (pid {proc.pid}) in {time.monotonic() - t0:.1f}s", file=out)
    return lay


def _kraft_cluster_id(seed: str) -> str:
    """A KRaft cluster id: 16 bytes, URL-safe base64 without padding (what StorageTool random-uuid prints)."""
    import base64

    raw = bytearray(uuid.UUID(hex=(seed + "0" * 32)[:32]).bytes)
    raw[0] &= 0x7F  # a leading '-' (1 id in 64) would read as an option to StorageTool's -t
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


def down(root: Path | None = None, out=sys.stdout, grace_s: float = 20.0) -> bool:
    """Stop the broker's whole process group; True if something was running."""
    lay = layout(root=root)
    pid = read_pid(lay)
    if pid is None:
        print("[stack] no broker running", file=out)
        lay.pid_file.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    t0 = time.monotonic()
    while pid_alive(pid) and time.monotonic() - t0 < grace_s:
        time.sleep(0.1)
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while pid_alive(pid):
            time.sleep(0.05)
    lay.pid_file.unlink(missing_ok=True)
    print(f"[stack] broker (pid {pid}) stopped", file=out)
    return True


def status(root: Path | None = None) -> dict:
    lay = layout(root=root)
    pid = read_pid(lay)
    port = int(lay.port_file.read_text()) if lay.port_file.exists() else None
    ready = bool(pid and port and broker_ready(f"127.0.0.1:{port}"))
    return {"running": bool(pid), "pid": pid, "bootstrap": f"127.0.0.1:{port}" if port else None,
            "ready": ready, "data": str(lay.data)}
