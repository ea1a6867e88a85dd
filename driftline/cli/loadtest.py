"""`driftline loadtest`: a synthetic fleet with ground truth against a running pipeline.

Against a local `driftline run` (or the Kafka deployment, with ``--bus kafka``) it sets up its
own tenants, tokens and policies through the data directory, exactly as `driftline tokens` and
`driftline policy set` do, rotates a token and changes the policies mid-run, then reads the
flags back (the running pipeline's admin API, or ClickHouse with ``--clickhouse``) and reports
accuracy and speed.

A remote target (``--target HOST:PORT``) is not ours to set up: give each tenant's ingest token
with ``--token-file TENANT=PATH``, publish the policies the fleet assumes there (write them with
``--policies-out DIR``), and say where the flags are read (``--clickhouse DSN``, or the
pipeline's admin API with ``--admin URL --admin-token-file F``). A remote run has no token
rotation and no policy change: both need the pipeline's own data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from driftline.cli.common import add_setting_flags, policies_of, publish_policy, settings_of, utc


def _target(args: argparse.Namespace, settings: Any) -> tuple[str, int]:
    default = settings.grpc_port if args.protocol == "grpc" else settings.http_port
    host, _, port = (args.target or settings.host).rpartition(":")
    if not host:  # no port given
        return port or "127.0.0.1", default
    return host, int(port)


class Remote(NamedTuple):
    """What a remote target needs from the user: tenants and their tokens, a flag source."""

    tokens: dict[str, str]  # tenant -> bearer token, in the order given
    admin: str | None  # base URL of the pipeline's admin API
    admin_token: str | None


def _tenant_files(pairs: list[str]) -> dict[str, Path]:
    """``TENANT=PATH`` pairs (``--token-file``), tenant ids checked, none twice."""
    from schemas.identity import check_tenant_id

    files: dict[str, Path] = {}
    for pair in pairs:
        tenant, sep, path = pair.partition("=")
        if not sep or not tenant or not path:
            raise ValueError(f"--token-file takes TENANT=PATH, got {pair!r}")
        check_tenant_id(tenant)
        if tenant in files:
            raise ValueError(f"--token-file names tenant {tenant!r} twice")
        files[tenant] = Path(path)
    return files


def _secret(path: Path, flag: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ValueError(f"{flag} {path}: cannot read it ({error.strerror})") from None
    if not value:
        raise ValueError(f"{flag} {path}: the file is empty")
    return value


def remote_plan(args: argparse.Namespace) -> Remote | None:
    """None for a local pipeline (set up through ``--data``); else what the user gave for a
    remote one. A remote target without tokens, or without a flag source, is an error naming
    the flag: loadtest never makes a local token a remote pipeline would not know."""
    if not args.token_file:
        if args.target is not None:
            raise ValueError(
                "--target names a remote receiver, whose tokens loadtest cannot create: give "
                "each tenant's ingest token with --token-file TENANT=PATH (for a local "
                "`driftline run`, leave out --target and use --data and --http-port/--grpc-port)"
            )
        if args.admin is not None or args.admin_token_file is not None:
            raise ValueError("--admin reads a remote pipeline's flags: give --token-file too")
        return None
    if args.rotation_storm:
        raise ValueError(
            "--rotation-storm rotates tokens, which needs the pipeline's token registry: run it "
            "against a local `driftline run` (without --token-file)"
        )
    tokens = {tenant: _secret(path, "--token-file") for tenant, path in
              _tenant_files(args.token_file).items()}  # fmt: skip
    if args.admin is not None and args.clickhouse is not None:
        raise ValueError("read the flags from --admin or from --clickhouse, not both")
    if args.admin is None and args.clickhouse is None:
        raise ValueError(
            "a remote run reads its flags back from the pipeline: give --admin URL with "
            "--admin-token-file FILE (`driftline run`'s admin API), or --clickhouse DSN"
        )
    admin_token = None
    if args.admin is not None:
        if args.admin_token_file is None:
            raise ValueError("--admin needs --admin-token-file (the pipeline's DATA/admin.token)")
        admin_token = _secret(Path(args.admin_token_file), "--admin-token-file")
    elif args.admin_token_file is not None:
        raise ValueError("--admin-token-file goes with --admin URL")
    return Remote(tokens, args.admin.rstrip("/") if args.admin else None, admin_token)


def write_policies(tenants: list[str], out: Path) -> list[Path]:
    """The policies the fleet assumes (one JSON file per tenant), for `driftline policy set`."""
    from loadtest.fleet import policy_v1

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for tenant in tenants:
        path = out / f"{tenant}.json"
        policy = policy_v1(tenant)
        path.write_text(policy.model_dump_json(indent=2, exclude={"version"}) + "\n")
        written.append(path)
    return written


class FlagReader:
    """Flag transitions of the run's tenants: from the running `driftline run` (its admin API),
    or ClickHouse."""

    def __init__(
        self,
        data: Path,
        clickhouse: str | None,
        bootstrap: str | None = None,
        admin: tuple[str, str] | None = None,
    ) -> None:
        self.clickhouse = clickhouse
        self.bootstrap = bootstrap
        self.base: str | None = None
        self.headers: dict[str, str] = {}
        if admin is not None:
            self.base = admin[0]
            self.headers["Authorization"] = f"Bearer {admin[1]}"
        elif clickhouse is None and bootstrap is None:
            from driftline import admin_auth, datadir

            running = datadir.running(data)
            if running is None:
                raise ValueError(
                    f"no running `driftline run` with data directory {data} (start one, or "
                    "read the flags from ClickHouse with --clickhouse DSN)"
                )
            self.base = str(running["admin"])
            token = admin_auth.read(data)
            if token is not None:
                self.headers["Authorization"] = f"Bearer {token}"

    def read(self, tenants: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if self.bootstrap is not None and self.clickhouse is None:
            return asyncio.run(_kafka_flags(self.bootstrap, set(tenants)))
        if self.base is not None:
            import httpx

            for tenant in tenants:
                try:
                    response = httpx.get(
                        f"{self.base}/api/flags",
                        params={"tenant": tenant},
                        headers=self.headers,
                        timeout=60,
                    )
                except httpx.HTTPError as error:
                    raise ValueError(f"cannot read flags from {self.base}: {error}") from None
                if response.status_code in (401, 403):
                    raise ValueError(
                        f"the admin API at {self.base} refused us ({response.status_code}): "
                        f"{response.text[:200]}"
                    )
                response.raise_for_status()
                rows += response.json()
            return rows
        import store
        from store import queries

        assert self.clickhouse is not None
        client = store.connect(self.clickhouse)
        try:
            for tenant in tenants:
                rows += queries.flag_transitions(client, tenant)
        finally:
            client.close()
        return rows


async def _kafka_flags(bootstrap: str, tenants: set[str]) -> list[dict[str, Any]]:
    """The Kafka deployment: every flag transition on the flags topic, timed by its append to
    the log (the moment it left the processors)."""
    from aiokafka import AIOKafkaConsumer

    from schemas import DriftFlag, topics

    consumer = AIOKafkaConsumer(
        topics.FLAGS, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    rows: list[dict[str, Any]] = []
    try:
        while batches := await consumer.getmany(timeout_ms=1500, max_records=50_000):
            for messages in batches.values():
                for message in messages:
                    flag = DriftFlag.from_json(message.value)
                    if flag.tenant_id in tenants:
                        rows.append(
                            {
                                "endpoint_id": flag.endpoint_id,
                                "kind": flag.kind.value,
                                "state": flag.state.value,
                                "flag_id": flag.flag_id,
                                "first_seen": flag.first_seen,
                                "last_seen": flag.last_seen,
                                "recorded_at": message.timestamp / 1000,
                            }
                        )
    finally:
        await consumer.stop()
    return rows


def settle(
    reader: FlagReader, tenants: list[str], quiet: float, limit: float
) -> list[dict[str, Any]]:
    """Read until the flags stop changing for ``quiet`` seconds (at most ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    rows = reader.read(tenants)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(min(1.0, quiet / 2))
        again = reader.read(tenants)
        if len(again) != len(rows):
            rows, stable_since = again, time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            return again
    return rows


def connections_for(rate: float, given: int | None) -> int:
    """Connections the sender needs: each holds one export until it is answered, so at
    ``rate`` exports/s and answers taking up to 250 ms it needs rate / 4. With a fixed 64,
    a 10,000-endpoint run at 1,000/s queued in the sender whenever store writes took over
    64 ms, and reported that queue as the pipeline stalling."""
    if given is not None:
        return given
    return max(64, math.ceil(rate * 0.25))


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from ingest.tokens import TokenStore
    from loadtest import fleet as fleet_model
    from loadtest import report
    from loadtest.truth import Cause, ground_truth
    from schemas.durations import parse_duration

    console = Console(stderr=True)
    settings = settings_of(args)
    if args.policies_out is not None:
        if not args.token_file:
            raise ValueError("--policies-out writes the policies of the --token-file tenants")
        written = write_policies(list(_tenant_files(args.token_file)), Path(args.policies_out))
        for path in written:
            print(path)
        console.print(
            "publish them where the pipeline runs (`driftline policy set FILE` for each), "
            "then run loadtest again without --policies-out"
        )
        return 0
    remote = remote_plan(args)
    run_id = secrets.token_hex(3)
    if remote is None:
        tenants = tuple(f"lt{run_id}-{n}" for n in range(args.tenants))
        seed = 7 if args.seed is None else args.seed
    else:  # the user's tenants: fresh serials each run (a random seed), so earlier runs'
        # endpoints in those tenants are not judged
        tenants = tuple(remote.tokens)
        seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    reader = FlagReader(
        settings.data,
        args.clickhouse,
        settings.bootstrap if settings.bus == "kafka" and remote is None else None,
        (remote.admin, remote.admin_token or "") if remote and remote.admin else None,
    )
    if remote is not None:
        reader.read(list(tenants))  # refused or unreachable: say so before sending anything
    sc = fleet_model.scenario(
        args.endpoints, args.rate, args.duration, tenants, args.rotation_storm, remote is None
    )
    laptops = fleet_model.fleet(args.endpoints, sc, seed)
    truth = ground_truth(laptops, sc, seed)
    planned = sum(len(fleet_model.sends(laptop, sc, seed)) for laptop in laptops)

    tokens: dict[tuple[str, bool], str] = {}
    controls: list[Any] = []
    if remote is not None:
        tokens = {(tenant, False): token for tenant, token in remote.tokens.items()}
    else:
        tokens_db = TokenStore(settings.token_registry)
        policies = policies_of(settings)
        for tenant in tenants:
            tokens[(tenant, False)] = tokens_db.create(tenant)[1]
            publish_policy(settings, policies.put(sc.policies[tenant]))
        remember = parse_duration(settings.token_memory)

        def rotate() -> dict[str, str]:
            new = {}
            for tenant in sc.rotated:
                _, token, rotation = tokens_db.rotate(tenant, sc.grace, remember)
                publish_policy(settings, policies.record_rotation(tenant, utc(rotation.rotated_at)))
                new[tenant] = token
            return new

        def change_policies() -> None:
            for tenant in tenants:
                publish_policy(settings, policies.put(sc.changed[tenant]))

        controls = [
            (sc.rotate_at, "token rotation", rotate),
            (sc.policy_at, "policy change", change_policies),
        ]
    triggers = {
        (laptop.index, t.seq)
        for laptop in laptops
        for kind_transitions in (
            truth.transitions.get((laptop.endpoint_id, kind), []) for kind in _kinds()
        )
        for t in kind_transitions
        if t.cause is Cause.SEND
    }
    host, port = _target(args, settings)
    console.print(
        f"loadtest {run_id}: {args.endpoints:,} endpoints in tenants {', '.join(tenants)}; "
        f"{planned:,} exports over {sc.span / 60:,.1f} fleet minutes in {args.duration:g} s "
        f"(x{sc.compression:.1f}) to {host}:{port} over OTLP/{args.protocol.upper()}"
    )
    if remote is not None:
        console.print(
            "remote target: no token rotation and no policy change (both need the pipeline's "
            "data directory), so stale_token is not judged; the tenants must have the policies "
            "of --policies-out"
        )
    time.sleep(2.0)  # the pipeline polls its policy directory every second
    progress = Progress(
        TextColumn("sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    job = {
        "endpoints": args.endpoints,
        "rate": args.rate,
        "duration": args.duration,
        "tenants": tenants,
        "seed": seed,
        "controls": remote is None,
        "protocol": args.protocol,
        "connections": connections_for(args.rate, args.connections),
        "host": host,
        "port": port,
        "tokens": tokens,
        "triggers": triggers,
        "storm": args.rotation_storm,
    }
    with progress:
        task = progress.add_task("sending", total=planned)
        stats = _generate(
            job, args.procs, sc, controls, lambda n: progress.update(task, completed=n)
        )
    console.print("waiting for the pipeline to settle …")
    rows = settle(reader, list(tenants), args.settle, args.settle_limit)
    result: dict[str, Any] = {
        "run": run_id,
        "target": f"{host}:{port}",
        "fleet": report.fleet_summary(sc, laptops, truth, seed),
        "not_judged": [] if remote is None else ["token rotation", "policy change"],
        "speed": report.speed(stats, args.protocol),
        **report.score(truth, rows, stats, laptops),
    }
    Console().print(report.render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.plot:
        report.plot(result, stats, args.plot)
    overall = result["accuracy"]["overall"]
    return 0 if overall["precision"] == 1.0 and overall["recall"] == 1.0 else 1


def _kinds() -> list[Any]:
    from schemas.messages import FlagKind

    return list(FlagKind)


def _generate(
    job: dict[str, Any],
    procs: int,
    sc: Any,
    controls: list[Any],
    progress: Callable[[int], None],
) -> Any:
    """Send the fleet from ``procs`` generator processes (laptops split by index); this process
    runs the controls (rotation, policy change) at their moments and tells the generators the
    rotated-in tokens."""
    import multiprocessing

    from loadtest.sender import merge

    context = multiprocessing.get_context("spawn")  # no inherited event loops or threads
    pipes = []
    for slot in range(procs):
        mine, theirs = context.Pipe()
        context.Process(
            target=_generator, daemon=True, args=({**job, "slot": slot, "procs": procs}, theirs)
        ).start()
        pipes.append(mine)
    for pipe in pipes:
        if (answer := pipe.recv()) != "ready":
            raise RuntimeError(f"a generator process failed to start: {answer}")
    start_at = time.time() + 0.5
    for pipe in pipes:
        pipe.send(("start", start_at))
    pending = sorted(controls, key=lambda control: control[0])
    done: list[Any] = []
    sent = [0] * procs
    controls_at: dict[str, float] = {}
    while len(done) < procs:
        while pending and time.time() >= start_at + pending[0][0] / sc.compression:
            _, name, action = pending.pop(0)
            controls_at[name] = time.time()
            tokens = action()
            if tokens is not None:
                for pipe in pipes:
                    pipe.send(("tokens", tokens))
        for slot, pipe in enumerate(pipes):
            while pipe.poll():
                kind, value = pipe.recv()
                if kind == "progress":
                    sent[slot] = value
                elif kind == "done":
                    done.append(value)
                    sent[slot] = value.sent
                elif kind == "error":
                    raise RuntimeError(f"generator {slot}: {value}")
        progress(sum(sent))
        time.sleep(0.01)
    stats = merge(done)
    stats.controls.update(controls_at)
    return stats


def _generator(job: dict[str, Any], pipe: Any) -> None:
    """One generator process: its share of the laptops, on the shared schedule."""
    import uvloop

    try:
        pipe.send(("done", uvloop.run(_generator_main(job, pipe))))
    except Exception as error:
        pipe.send(("error", repr(error)))


async def _generator_main(job: dict[str, Any], pipe: Any) -> Any:
    from loadtest import fleet as fleet_model
    from loadtest.otlp import Templates
    from loadtest.sender import GrpcPool, HttpPool, Retry, Stats, drive

    sc = fleet_model.scenario(
        job["endpoints"], job["rate"], job["duration"], job["tenants"], job["storm"],
        job["controls"],
    )  # fmt: skip
    laptops = fleet_model.fleet(job["endpoints"], sc, job["seed"])
    mine = [laptop for laptop in laptops if laptop.index % job["procs"] == job["slot"]]
    templates = Templates({laptop.index: laptop for laptop in mine})
    for laptop in mine:  # encoded before the clock starts
        for tool in range(len(laptop.tools)):
            for signal in ("metrics", "logs"):
                templates.get(laptop.index, tool, signal, 0)
    stats = Stats()
    pool: HttpPool | GrpcPool
    share = max(1, job["connections"] // job["procs"])
    if job["protocol"] == "grpc":
        pool = GrpcPool(job["host"], job["port"], share * 8, stats, retry=Retry())
    else:
        pool = HttpPool(job["host"], job["port"], share, stats, retry=Retry())
    await pool.start()
    pipe.send("ready")
    _, start_at = pipe.recv()
    tokens = dict(job["tokens"])

    def rotated() -> dict[str, str] | None:
        kind, new = pipe.recv()  # sent by the parent as it rotates
        assert kind == "tokens"
        return dict(new)

    controls = [(sc.rotate_at, "token rotation", rotated)] if sc.rotated else []
    try:
        await drive(
            fleet_model.all_sends(mine, sc, job["seed"]),
            sc.compression,
            pool,
            templates,
            tokens,
            lambda index: laptops[index].tenant,
            job["triggers"],
            controls,
            stats,
            progress=lambda sent: pipe.send(("progress", sent)),
            start_at=start_at,
        )
    finally:
        await pool.close()
    stats.controls.clear()  # the parent's clock for those
    return stats


def _cmd_record(args: argparse.Namespace) -> int:
    """Record until interrupted; the file is flushed per request."""
    import uvloop

    from driftline.ingest_runner import until_signalled
    from loadtest.record import Recorder, serve

    settings = settings_of(args)

    async def main(out: Any) -> int:
        recorder = Recorder(out)
        runner, server = await serve(
            recorder, settings.host, settings.http_port, settings.grpc_port
        )
        print(
            f"recording OTLP on {settings.host}: gRPC {settings.grpc_port}, HTTP "
            f"{settings.http_port} into {args.out} (credentials removed); Ctrl-C stops",
            file=sys.stderr,
        )
        try:
            await until_signalled()
        finally:
            await server.stop(1)
            await runner.cleanup()
        print(f"recorded {recorder.count:,} requests", file=sys.stderr)
        return 0

    with Path(args.out).open("w", encoding="utf-8") as out:
        return uvloop.run(main(out))


def _cmd_replay(args: argparse.Namespace) -> int:
    import uvloop
    from rich.console import Console

    from loadtest import report
    from loadtest.fleet import Send
    from loadtest.record import read
    from loadtest.sender import GrpcPool, HttpPool, Retry, Stats, replay

    settings = settings_of(args)
    speed = None if args.speed == "max" else float(args.speed)
    if speed is not None and speed <= 0:
        raise ValueError("--speed is a positive factor or max")
    token = Path(args.token_file).read_text().strip()
    recorded = list(read(Path(args.file)))
    protocol = args.protocol or (recorded[0].protocol if recorded else "http")
    host, port = _target(argparse.Namespace(target=args.target, protocol=protocol), settings)
    items = []
    for n, request in enumerate(recorded):
        extra = "".join(
            f"{name}: {value}\r\n"
            for name, value in request.headers.items()
            if name in ("content-type", "content-encoding") and protocol == "http"
        )
        send = Send(request.at, 0, n, 0, request.signal, False, 0, True)
        items.append((send, request.body, extra))

    async def main() -> Stats:
        stats = Stats()
        pool: HttpPool | GrpcPool
        if protocol == "grpc":
            pool = GrpcPool(host, port, args.connections * 8, stats, retry=Retry())
        else:
            pool = HttpPool(host, port, args.connections, stats, retry=Retry())
        await pool.start()
        try:
            await replay(items, speed, pool, token, stats)
        finally:
            await pool.close()
        return stats

    stats = uvloop.run(main())
    result = report.speed(stats, protocol)
    Console().print(
        f"replayed {result['sent']:,} requests to {host}:{port} over OTLP/{protocol.upper()}: "
        f"{result['accepted']:,} accepted, {result['rejected']:,} rejected, {result['failed']:,} "
        f"failed; {result['exports_per_second']:,.0f} exports/s; latency p50/p95/p99 "
        + " / ".join(f"{result['latency_ms'][q] or 0:,.1f} ms" for q in ("p50", "p95", "p99"))
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0 if result["failed"] == 0 and result["rejected"] == 0 else 1


def add_commands(commands: Any) -> None:
    record = commands.add_parser(
        "record",
        help="record the OTLP traffic sent here (bodies, timing; credentials removed)",
    )
    record.add_argument("--out", required=True, metavar="FILE", help="the recording to write")
    record.set_defaults(func=_cmd_record)
    add_setting_flags(record, "--host", "--grpc-port", "--http-port")
    replay = commands.add_parser("replay", help="send a recording to a receiver")
    replay.add_argument("file", metavar="FILE")
    replay.add_argument(
        "--speed", default="1", help="1 = as recorded, N = N times faster, max = at once"
    )
    replay.add_argument(
        "--token-file", required=True, help="file holding the ingest token to send (not argv)"
    )
    replay.add_argument("--target", default=None, help="HOST[:PORT] of the receiver")
    replay.add_argument("--protocol", choices=["http", "grpc"], default=None)
    replay.add_argument("--connections", type=int, default=64)
    replay.add_argument("--json", default=None, metavar="FILE")
    replay.set_defaults(func=_cmd_replay)
    add_setting_flags(replay, "--host", "--grpc-port", "--http-port")
    loadtest = commands.add_parser(
        "loadtest",
        help="send a synthetic fleet with ground truth; report accuracy and speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    loadtest.add_argument("--endpoints", type=int, default=400, help="laptops (default 400)")
    loadtest.add_argument("--rate", type=float, default=300, help="exports/s (default 300)")
    loadtest.add_argument("--duration", type=float, default=40, help="seconds (default 40)")
    loadtest.add_argument(
        "--target", default=None, help="HOST[:PORT] of the receiver (default: --host and its port)"
    )
    loadtest.add_argument("--protocol", choices=["http", "grpc"], default="http")
    loadtest.add_argument("--tenants", type=int, default=3, help="tenants (default 3)")
    loadtest.add_argument(
        "--procs", type=int, default=1, help="generator processes (default 1; one per core)"
    )
    loadtest.add_argument(
        "--rotation-storm",
        action="store_true",
        help="rotate every tenant's token, with five times the laptops that keep the old one",
    )
    loadtest.add_argument(
        "--seed", type=int, default=None, help="the fleet's seed (default 7; remote: random)"
    )
    loadtest.add_argument(
        "--token-file",
        action="append",
        default=[],
        metavar="TENANT=PATH",
        help="a remote target's tenant and the file holding its ingest token (repeatable)",
    )
    loadtest.add_argument(
        "--policies-out",
        default=None,
        metavar="DIR",
        help="write the policies the fleet assumes for the --token-file tenants, then stop",
    )
    loadtest.add_argument(
        "--admin", default=None, metavar="URL", help="a remote `driftline run`'s admin API"
    )
    loadtest.add_argument(
        "--admin-token-file",
        default=None,
        metavar="FILE",
        help="its admin token (DATA/admin.token)",
    )
    loadtest.add_argument(
        "--connections",
        type=int,
        default=None,
        help="HTTP connections (gRPC: x8 calls in flight); default: enough for answers of "
        "up to 250 ms at --rate, at least 64 (a real fleet has one per laptop)",
    )
    loadtest.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    loadtest.add_argument("--plot", default=None, metavar="FILE", help="write a PNG (matplotlib)")
    loadtest.add_argument("--clickhouse", default=None, help="read flags from this ClickHouse DSN")
    loadtest.add_argument(
        "--settle", type=float, default=5, help="seconds without new flags that end the wait"
    )
    loadtest.add_argument(
        "--settle-limit", type=float, default=120, help="longest wait for the flags (seconds)"
    )
    loadtest.set_defaults(func=_cmd_loadtest)
    add_setting_flags(
        loadtest,
        "--data",
        "--tokens",
        "--bus",
        "--bootstrap",
        "--host",
        "--grpc-port",
        "--http-port",
    )
