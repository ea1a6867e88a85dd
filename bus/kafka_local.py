"""A real single-node Apache Kafka broker (KRaft mode) from the official jars, for dev and tests.

Machines without a Docker engine still get the same broker that production runs: the jars come
from Maven Central through ``mvn`` once, then ``up`` starts a detached JVM whose config, data,
logs and pid file all live in one data directory, so reruns reuse it and ``down`` finds it.

    python -m bus.kafka_local up [--port N] [--data DIR]
    python -m bus.kafka_local status [--data DIR]
    python -m bus.kafka_local down [--data DIR]

Needs ``java`` (17+) and, for the first download, ``mvn``. POSIX only (flock, signals).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VERSION = "4.0.0"
DEFAULT_PORT = 9092
DEFAULT_DATA_DIR = Path(".cache/kafka-data")
DEFAULT_TIMEOUT = 90.0
SCALA_VERSION = "2.13"
# Kafka's POMs leave the logging backend out (only its tarball bundles one): without these jars
# the broker runs but SLF4J falls back to NOP and nothing is logged. 2.24.3 is what 4.0.0 ships.
LOG4J_VERSION = "2.24.3"
HEALTHCHECK_TOPIC = "driftline.healthcheck"
JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    # C1 only: on a fresh broker the C2 compiler threads took more CPU than the requests did
    # (half the broker's CPU under 2,000 snapshots/s on two cores); this broker is for
    # development, tests and benchmarks, and starts faster too
    "-XX:TieredStopAtLevel=1",
)

PID_FILE = "kafka.pid"
PROPERTIES_FILE = "server.properties"
LOG4J_FILE = "log4j2.properties"
SERVER_LOG = "server.log"  # log4j2, WARN and up
CONSOLE_LOG = "kafka.out"  # JVM stdout/stderr: crashes before log4j is up land here
KRAFT_DIR = "kraft"

_LIBS_MARKER = "libs.complete"
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.\-]*")
# `sh` backgrounds java and exits at once, so java is reparented away from us: no zombie for our
# process to reap, and the broker outlives the Python process that started it.
_LAUNCH = 'out="$1"; shift; "$@" </dev/null >"$out" 2>&1 & echo "$!"'
_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.driftline</groupId>
  <artifactId>kafka-local-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""
_DEPENDENCY = """    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{version}</version>
    </dependency>"""


class KafkaLocalError(RuntimeError):
    """The local broker could not be provisioned, started or reached."""


@dataclass(frozen=True)
class BrokerStatus:
    data_dir: Path
    pid: int | None
    port: int | None
    answering: bool

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def bootstrap(self) -> str | None:
        return None if self.port is None else _bootstrap(self.port)


# --- jars -------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$DRIFTLINE_CACHE`` or ``~/.cache/driftline``: shared by every checkout on the machine."""
    configured = os.environ.get("DRIFTLINE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "driftline"


def ensure_jars(version: str = DEFAULT_VERSION) -> Path:
    """Return the folder of Kafka's runtime jars, fetching them with Maven on first use.

    The marker is written only after the jars are in place, so an interrupted download is redone.
    """
    if not _VERSION_RE.fullmatch(version):
        raise KafkaLocalError(f"not a Kafka version: {version!r}")
    home = cache_root() / f"kafka-{version}"
    libs, marker = home / "libs", home / _LIBS_MARKER
    if marker.is_file():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        if marker.is_file():  # another process finished the download while we waited
            return libs
        staging = Path(tempfile.mkdtemp(prefix="staging-", dir=home))
        try:
            fetched = _fetch_jars(version, staging)
            shutil.rmtree(libs, ignore_errors=True)
            fetched.rename(libs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        marker.write_text(f"kafka_{SCALA_VERSION}:{version} log4j:{LOG4J_VERSION}\n")
    return libs


def _fetch_jars(version: str, staging: Path) -> Path:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLocalError("`mvn` is not on PATH: Maven is needed once to fetch the Kafka jars")
    pom = staging / "pom.xml"
    pom.write_text(_pom(version))
    out = staging / "libs"
    result = _run(
        [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={out}",
            "-DincludeScope=runtime",
        ],
        cwd=staging,
        timeout=900,
    )
    kafka_jar = out / f"kafka_{SCALA_VERSION}-{version}.jar"
    if result.returncode != 0 or not kafka_jar.is_file():
        raise KafkaLocalError(
            f"mvn could not fetch kafka_{SCALA_VERSION}:{version} (exit {result.returncode}):\n"
            + _tail_text(result.stdout + result.stderr)
        )
    return out


def _pom(version: str) -> str:
    artifacts = [
        ("org.apache.kafka", f"kafka_{SCALA_VERSION}", version),
        ("org.apache.logging.log4j", "log4j-api", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
        # Kafka still compiles against SLF4J 1.7, hence the 1.x binding, not log4j-slf4j2-impl.
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ]
    dependencies = "\n".join(
        _DEPENDENCY.format(group=g, artifact=a, version=v) for g, a, v in artifacts
    )
    return _POM.format(dependencies=dependencies)


# --- broker lifecycle -------------------------------------------------------------------------


def up(
    port: int | None = None,
    data_dir: Path = DEFAULT_DATA_DIR,
    version: str = DEFAULT_VERSION,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Start the broker for ``data_dir`` (or reuse the one running) and return its bootstrap.

    ``port`` defaults to ``$KAFKA_PORT`` or 9092. ``timeout`` bounds the broker's startup, not the
    one-time jar download. Returns only once a record to ``driftline.healthcheck`` is acked: an
    answering port does not yet prove auto-created topics get a leader and producers an id.
    """
    port = _resolve_port(port)
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir / ".lock"):
        pid = _broker_pid(data_dir)
        if pid is not None:
            running_port = _configured_port(data_dir)
            if running_port != port:
                raise KafkaLocalError(
                    f"the broker for {data_dir} already runs on port {running_port}; "
                    "run `down` first to move it"
                )
            if not _answers(port):  # e.g. still starting after a crash of its starter
                _await_ready(pid, port, data_dir, time.monotonic() + timeout, log_offset=0)
            return _bootstrap(port)
        (data_dir / PID_FILE).unlink(missing_ok=True)
        if _port_taken(port):
            raise KafkaLocalError(
                f"127.0.0.1:{port} is already in use by a process not started for {data_dir}; "
                "pick another port (--port / KAFKA_PORT)"
            )
        libs = ensure_jars(version)
        java = _java()
        _write_config(data_dir, port)
        _format_storage(java, libs, data_dir)
        log_offset = _size(data_dir / SERVER_LOG)
        pid = _spawn(java, libs, data_dir)
        (data_dir / PID_FILE).write_text(f"{pid}\n")
        try:
            _await_ready(pid, port, data_dir, time.monotonic() + timeout, log_offset)
        except BaseException:  # also on Ctrl-C: never leave a half-started JVM behind
            _terminate(pid, grace=10.0)
            (data_dir / PID_FILE).unlink(missing_ok=True)
            raise
    return _bootstrap(port)


def down(data_dir: Path = DEFAULT_DATA_DIR, timeout: float = 30.0) -> None:
    """Stop the broker of ``data_dir``: SIGTERM for a clean shutdown, SIGKILL after ``timeout``."""
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        return
    with _locked(data_dir / ".lock"):
        pid = _broker_pid(data_dir)
        if pid is not None:
            _terminate(pid, grace=timeout)
        (data_dir / PID_FILE).unlink(missing_ok=True)


def status(data_dir: Path = DEFAULT_DATA_DIR) -> BrokerStatus:
    data_dir = data_dir.expanduser().resolve()
    pid = _broker_pid(data_dir)
    port = _configured_port(data_dir) if pid is not None else None
    answering = port is not None and _answers(port)
    return BrokerStatus(data_dir=data_dir, pid=pid, port=port, answering=answering)


def _resolve_port(port: int | None) -> int:
    if port is not None:
        return port
    configured = os.environ.get("KAFKA_PORT")
    try:
        return int(configured) if configured else DEFAULT_PORT
    except ValueError:
        raise KafkaLocalError(f"KAFKA_PORT is not a port number: {configured!r}") from None


def _bootstrap(port: int) -> str:
    return f"127.0.0.1:{port}"


def _java() -> Path:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return Path(java_home) / "bin" / "java"
    found = shutil.which("java")
    if found is None:
        raise KafkaLocalError("`java` (17 or newer) is not on PATH and JAVA_HOME is not set")
    return Path(found)


def _write_config(data_dir: Path, port: int) -> None:
    """Rewritten on every start: the controller port is picked afresh, so it never collides."""
    (data_dir / PROPERTIES_FILE).write_text(_server_properties(data_dir, port, _free_port()))
    (data_dir / LOG4J_FILE).write_text(_log4j_properties(data_dir / SERVER_LOG))


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # A static voter set: `format` then needs neither --standalone nor --initial-controllers.
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / KRAFT_DIR),
        "num.partitions": "4",
        "auto.create.topics.enable": "true",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",  # 50 by default: slow first group join, many files
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # After a restart the 4.0 controller waits out the previous run's broker session before
        # the broker may register again (KAFKA-19130): 9 s by default, which made restarts ~14 s.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "3000",
    }
    return "".join(f"{key}={_escape(value)}\n" for key, value in settings.items())


def _log4j_properties(log_file: Path) -> str:
    # shutdownHook=disable: log4j's own hook would otherwise stop logging before Kafka's shutdown.
    return (
        "status = warn\n"
        "shutdownHook = disable\n"
        "appender.file.type = File\n"
        "appender.file.name = file\n"
        f"appender.file.fileName = {_escape(str(log_file))}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = WARN\n"
        "rootLogger.appenderRef.file.ref = file\n"
    )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\")


def _format_storage(java: Path, libs: Path, data_dir: Path) -> None:
    """Format once: formatting again would refuse (or, forced, lose the cluster's identity)."""
    if (data_dir / KRAFT_DIR / "meta.properties").is_file():
        return
    result = _run(
        [
            *_java_command(java, libs, data_dir),
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            _cluster_id(),
            "-c",
            str(data_dir / PROPERTIES_FILE),
        ],
        timeout=120,
    )
    if result.returncode != 0:
        raise KafkaLocalError(
            f"formatting {data_dir / KRAFT_DIR} failed (exit {result.returncode}):\n"
            + _tail_text(result.stdout + result.stderr)
        )


def _cluster_id() -> str:
    """Kafka's own format: a URL-safe base64 UUID, never starting with '-' (read as a flag)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java_command(java: Path, libs: Path, data_dir: Path) -> list[str]:
    return [
        str(java),
        *JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={(data_dir / LOG4J_FILE).as_uri()}",
        "-cp",
        str(libs / "*"),  # expanded by the java launcher, not a shell
    ]


def _spawn(java: Path, libs: Path, data_dir: Path) -> int:
    command = [
        *_java_command(java, libs, data_dir),
        "kafka.Kafka",
        str(data_dir / PROPERTIES_FILE),
    ]
    # Own session: a Ctrl-C or closed terminal of the caller must not take the broker down.
    result = _run(
        ["/bin/sh", "-c", _LAUNCH, "sh", str(data_dir / CONSOLE_LOG), *command],
        timeout=30,
        new_session=True,
    )
    try:
        return int(result.stdout.strip())
    except ValueError:
        raise KafkaLocalError(f"could not start java: {_tail_text(result.stderr)}") from None


def _await_ready(pid: int, port: int, data_dir: Path, deadline: float, log_offset: int) -> None:
    while not _answers(port):
        if not _alive(pid):
            raise KafkaLocalError(
                f"the broker exited during startup\n{_log_tails(data_dir, log_offset)}"
            )
        if time.monotonic() > deadline:
            raise KafkaLocalError(
                f"the broker did not answer on 127.0.0.1:{port} in time\n"
                + _log_tails(data_dir, log_offset)
            )
        time.sleep(0.2)
    try:
        _healthcheck(_bootstrap(port), max(deadline - time.monotonic(), 1.0))
    except KafkaLocalError as exc:
        raise KafkaLocalError(f"{exc}\n{_log_tails(data_dir, log_offset)}") from None


def _healthcheck(bootstrap: str, timeout: float) -> None:
    """Wait for one acked record, the path every client takes (auto-create, leader, producer id)."""
    try:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError
    except ImportError:  # aiokafka is a project dependency; without it ApiVersions must do
        return

    last_error: list[BaseException] = []

    async def produce_once() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="driftline-kafka-local",
            acks="all",
            enable_idempotence=True,
        )
        await producer.start()
        try:
            await producer.send_and_wait(HEALTHCHECK_TOPIC, b"up")
        finally:
            await producer.stop()

    async def until_acked() -> None:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await produce_once()
                    return
                except KafkaError as exc:
                    last_error[:] = [exc]
                    await asyncio.sleep(0.5)

    # A thread of its own, because callers may already be inside a running event loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(asyncio.run, until_acked()).result()
        except TimeoutError:
            cause = f": {last_error[0]!r}" if last_error else ""
            raise KafkaLocalError(
                f"no ack from {bootstrap} within {timeout:.0f} s{cause}"
            ) from None


def _terminate(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, grace):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, 10.0):
        raise KafkaLocalError(f"the broker (pid {pid}) survived SIGKILL")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# --- process and socket probes ----------------------------------------------------------------


def _broker_pid(data_dir: Path) -> int | None:
    """The pid from the pid file, if that process is alive and really is this dir's broker."""
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if not _alive(pid):
        return None
    command_line = _command_line(pid)  # guards against a recycled pid
    if "kafka.Kafka" not in command_line or str(data_dir / PROPERTIES_FILE) not in command_line:
        return None
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0): ask procfs where there is one
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _command_line(pid: int) -> str:
    if Path("/proc/self/cmdline").is_file():
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            return ""
    ps = shutil.which("ps")  # macOS and other systems without procfs
    if ps is None:
        return ""
    return _run([ps, "-o", "command=", "-p", str(pid)], timeout=5).stdout


def _configured_port(data_dir: Path) -> int | None:
    try:
        lines = (data_dir / PROPERTIES_FILE).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "advertised.listeners":
            with contextlib.suppress(ValueError):
                return int(value.rpartition(":")[2])
    return None


def _answers(port: int, timeout: float = 1.0) -> bool:
    """True when a Kafka broker (not just any socket) answers: an ApiVersions v0 round trip."""
    client_id = b"driftline-kafka-local"
    correlation_id = 0x6B6C  # arbitrary
    request = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            header = _recv_exactly(sock, 10)  # size, correlation id, error code
    except OSError:
        return False
    if len(header) < 10:
        return False
    answered_id: int
    error_code: int
    _size, answered_id, error_code = struct.unpack(">iih", header)
    return answered_id == correlation_id and error_code == 0


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _port_taken(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- small helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise concurrent callers (pytest-xdist workers, two terminals) on one file lock."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(
    command: list[str], *, timeout: float, cwd: Path | None = None, new_session: bool = False
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(  # noqa: S603 - fixed argv built here, no shell expansion of input
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=new_session,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise KafkaLocalError(f"`{Path(command[0]).name}` took over {timeout:.0f} s") from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail_text(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _log_tails(data_dir: Path, server_log_offset: int) -> str:
    parts = []
    for name, offset in ((SERVER_LOG, server_log_offset), (CONSOLE_LOG, 0)):
        try:
            with (data_dir / name).open("rb") as handle:
                handle.seek(offset)
                text = handle.read().decode(errors="replace")
        except OSError:
            continue
        if text.strip():
            parts.append(f"--- tail of {data_dir / name} ---\n{_tail_text(text)}")
    return "\n".join(parts) or f"(nothing logged in {data_dir})"


# --- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bus.kafka_local",
        description="Run a local single-node Kafka broker (KRaft) from the official jars.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start (or reuse) the broker, print its bootstrap")
    start.add_argument("--port", type=int, default=None, help="default: $KAFKA_PORT or 9092")
    start.add_argument("--kafka-version", default=DEFAULT_VERSION)
    start.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds")
    stop = commands.add_parser("down", help="stop the broker")
    show = commands.add_parser("status", help="exit 0 if the broker runs, 1 if not")
    for command in (start, stop, show):
        command.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="data directory")
    args = parser.parse_args(argv)
    # aiokafka logs an ERROR "topic not found" while the health check topic is auto-created.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        if args.command == "up":
            print(up(args.port, args.data, args.kafka_version, args.timeout))
        elif args.command == "down":
            down(args.data)
        else:
            current = status(args.data)
            if not current.running:
                print(f"stopped ({current.data_dir})")
                return 1
            state = "ready" if current.answering else "not answering"
            print(f"running pid={current.pid} bootstrap={current.bootstrap} {state}")
    except KafkaLocalError as exc:
        print(f"kafka_local: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
