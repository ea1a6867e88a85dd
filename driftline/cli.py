"""`driftline …`: the composition root. Parses flags, builds settings, calls into the stages."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from driftline.settings import Settings
from schemas.durations import parse_duration

# flag → Settings field, for the settings a flag can override (None keeps env/default)
_SETTING_FLAGS: dict[str, tuple[str, type, str]] = {
    "--data": ("data", Path, "data directory (DRIFTLINE_DATA, default ./.driftline)"),
    "--bus": ("bus", str, "memory (in-process) or kafka (DRIFTLINE_BUS)"),
    "--bootstrap": ("bootstrap", str, "Kafka bootstrap servers (DRIFTLINE_BOOTSTRAP)"),
    "--host": ("host", str, "address to listen on (DRIFTLINE_HOST, default 127.0.0.1)"),
    "--grpc-port": ("grpc_port", int, "OTLP/gRPC port (DRIFTLINE_GRPC_PORT, default 4317)"),
    "--http-port": ("http_port", int, "OTLP/HTTP port (DRIFTLINE_HTTP_PORT, default 4318)"),
    "--admin-port": ("admin_port", int, "health and metrics port (DRIFTLINE_ADMIN_PORT, 8888)"),
    "--workers": ("workers", int, "receiver processes, 0 = one per core (DRIFTLINE_WORKERS)"),
    "--tokens": ("tokens", Path, "token registry file (DRIFTLINE_TOKENS, default DATA/tokens.db)"),
    "--max-grpc-bytes": ("max_grpc_bytes", int, "largest gRPC message (default 4 MiB)"),
    "--max-http-bytes": ("max_http_bytes", int, "largest decoded HTTP body (default 20 MiB)"),
    "--max-attributes": ("max_attributes", int, "attributes per resource (default 128)"),
    "--max-attribute-value-length": (
        "max_attribute_value_length",
        int,
        "characters per attribute value (default 4096)",
    ),
    "--max-body-bytes-in-flight": (
        "max_body_bytes_in_flight",
        int,
        "request bodies held at once per receiver process; past it 503 (default 256 MiB)",
    ),
    "--tls-cert": ("tls_cert", Path, "PEM certificate chain: serve both receivers over TLS"),
    "--tls-key": ("tls_key", Path, "PEM private key of --tls-cert"),
    "--tls-client-ca": (
        "tls_client_ca",
        Path,
        "PEM CA: require client certificates it signed (mutual TLS)",
    ),
}


def _add_setting_flags(parser: argparse.ArgumentParser, *flags: str) -> None:
    for flag in flags:
        _, kind, help_text = _SETTING_FLAGS[flag]
        parser.add_argument(flag, type=kind, default=None, help=help_text)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for flag, (field, _, _) in _SETTING_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from driftline import ingest_runner
    from ingest.tokens import TokenStore

    settings = _settings(args)
    ingest_runner.tls_options(settings)  # a half-configured TLS fails here, not in workers
    if not TokenStore(settings.token_registry).records():
        logging.warning(
            "no ingest tokens yet in %s: create one with `driftline tokens create --tenant NAME`",
            settings.token_registry,
        )
    ingest_runner.run(settings)
    return 0


def _token_store(args: argparse.Namespace) -> Any:
    from ingest.tokens import TokenStore

    return TokenStore(_settings(args).token_registry)


def _cmd_tokens_create(args: argparse.Namespace) -> int:
    token_id, token = _token_store(args).create(args.tenant)
    print(f"created token {token_id} for tenant {args.tenant}; it is shown once:", file=sys.stderr)
    print(token)
    return 0


def _cmd_tokens_rotate(args: argparse.Namespace) -> int:
    from ingest.tokens import format_time

    settings = _settings(args)
    store = _token_store(args)
    grace = parse_duration(args.grace)
    token_id, token, rotation = store.rotate(
        args.tenant, grace, parse_duration(settings.token_memory)
    )
    # the processors learn of the rotation through the tenant's policy, like any policy change
    _publish_policy(
        settings, _policies(settings).record_rotation(args.tenant, _utc(rotation.rotated_at))
    )
    print(
        f"rotated tenant {args.tenant}: new token {token_id}; previous tokens work until "
        f"{format_time(rotation.grace_ends)}. The new token is shown once:",
        file=sys.stderr,
    )
    print(token)
    return 0


def _cmd_tokens_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        record = _token_store(args).revoke(args.token_id, parse_duration(settings.token_memory))
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    print(f"revoked token {record.token_id} of tenant {record.tenant_id}")
    return 0


def _cmd_tokens_list(args: argparse.Namespace) -> int:
    import time

    from ingest.tokens import format_time

    now = time.time()
    rows = [("TOKEN ID", "TENANT", "STATE", "CREATED", "GRACE ENDS", "REVOKED")]
    for r in _token_store(args).records(args.tenant):
        state = r.state(now)
        rows.append(
            (
                r.token_id,
                r.tenant_id,
                state.value if state else "forgotten",
                format_time(r.created_at),
                format_time(r.expires_at),
                format_time(r.revoked_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _policies(settings: Settings) -> Any:
    from driftline.policies import PolicyDirectory

    return PolicyDirectory(settings.data / "policies")


def _utc(timestamp: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC)


def _publish_policy(settings: Settings, policy: Any) -> None:
    """Embedded: the data directory is the source. Kafka: also the compacted policy topic."""
    if settings.bus == "kafka":
        import asyncio

        from driftline.policies import publish

        asyncio.run(publish(settings.bootstrap, policy))


def _cmd_policy_set(args: argparse.Namespace) -> int:
    from schemas.policy import PolicyError, TenantPolicy

    settings = _settings(args)
    try:
        policy = TenantPolicy.from_file(args.file)
    except PolicyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from ingest.tokens import TokenStore

    rotations = TokenStore(settings.token_registry).rotations(policy.tenant)
    if rotations and policy.token_rotated_at is None:
        policy = policy.model_copy(update={"token_rotated_at": _utc(rotations[-1].rotated_at)})
    stored = _policies(settings).put(policy)
    _publish_policy(settings, stored)
    print(f"policy of tenant {stored.tenant} is now version {stored.version}")
    return 0


def _cmd_policy_show(args: argparse.Namespace) -> int:
    from schemas.policy import TenantPolicy

    policy = _policies(_settings(args)).get(args.tenant)
    if policy is None:
        print(
            f"no policy published for tenant {args.tenant}; the default applies:", file=sys.stderr
        )
        policy = TenantPolicy.default(args.tenant)
    print(json.dumps(json.loads(policy.to_json()), indent=2))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import uvloop

    from driftline import embedded

    uvloop.run(embedded.run(_settings(args)))
    return 0


def _query(args: argparse.Namespace, path: str, params: dict[str, str | None]) -> Any:
    """Through the running `driftline run` if there is one (it holds the embedded store)."""
    from driftline import embedded, store

    if not args.all_tenants and not args.tenant:
        raise ValueError("name a tenant with --tenant (or --all-tenants, for administrators)")
    tenant = None if args.all_tenants else args.tenant
    settings = _settings(args)
    running = embedded.run_file(settings.data)
    if args.clickhouse is None and running.exists():
        import httpx

        base = json.loads(running.read_text())["admin"]
        query = {k: v for k, v in {**params, "tenant": tenant}.items() if v is not None}
        response = httpx.get(f"{base}/api/{path}", params=query, timeout=30)
        response.raise_for_status()
        return response.json()
    dsn = args.clickhouse or f"chdb://{embedded.store_path(settings.data).resolve()}"
    client = store.connect(dsn)
    try:
        store.migrate(client)
        from driftline import queries

        if path == "drift":
            return queries.drift(client, tenant, params["kind"], params["team"], params["service"])
        return queries.endpoint_history(client, tenant, str(params["id"]))
    finally:
        client.close()


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = [columns] + [
        ["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def _cmd_drift(args: argparse.Namespace) -> int:
    if args.remediation:
        return _remediation(args)
    rows = _query(args, "drift", {"kind": args.kind, "team": args.team, "service": args.service})
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
    else:
        columns = [
            "tenant_id",
            "endpoint_id",
            "kind",
            "team_id",
            "service_name",
            "app_version",
            "detail",
            "first_seen",
        ]
        _print_table(rows, columns)
    return 0


def _remediation(args: argparse.Namespace) -> int:
    if not args.all_tenants and not args.tenant:
        raise ValueError("name a tenant with --tenant (or --all-tenants, for administrators)")
    rows = _operate(
        args,
        "remediation",
        {"tenant": None if args.all_tenants else args.tenant, "stuck_after": args.stuck_after},
    )
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    columns = ["status", "vendor", "device_id", "serial_number", "endpoint_id", "synced_at"]
    _print_table(rows, [*columns, "remediated_at", "time_to_remediate_s"])
    return 0


def _cmd_endpoint(args: argparse.Namespace) -> int:
    history = _query(args, "endpoint", {"id": args.endpoint_id})
    if args.json:
        print(json.dumps(history, default=str, indent=2))
        return 0
    print(f"endpoint {history['endpoint_id']}")
    print("\nstates:")
    _print_table(
        history["states"],
        ["first_seen", "last_seen", "service_name", "app_version", "team_id", "serial_number"],
    )
    print("\nflags:")
    _print_table(history["flags"], ["last_seen", "kind", "state", "detail", "policy_version"])
    print("\nrejected requests:")
    _print_table(history["rejections"], ["observed_at", "reason", "token_id", "source"])
    return 0


def _cmd_processors_worker(args: argparse.Namespace) -> int:
    from driftline.processors_runner import run_worker

    settings = _settings(args)
    run_worker(
        settings.bootstrap,
        settings.data / "processors",
        partitions=args.partitions,
        app_id=args.app_id,
    )
    return 0


def _cmd_sink(args: argparse.Namespace) -> int:
    from driftline.embedded import dead_letter_path, store_path
    from driftline.sink import SinkOptions, serve

    settings = _settings(args)
    serve(
        settings.bootstrap,
        args.clickhouse or f"chdb://{store_path(settings.data).resolve()}",
        SinkOptions(
            group_id=args.group,
            dead_letter=dead_letter_path(settings.data),
            last_seen_resolution=settings.last_seen_resolution,
        ),
    )
    return 0


def _cmd_kafka(args: argparse.Namespace) -> int:
    from driftline import kafka_local

    argv = [args.kafka_command]
    if args.kafka_command == "up" and args.port is not None:
        argv += ["--port", str(args.port)]
    if args.kafka_data is not None:
        argv += ["--data", str(args.kafka_data)]
    return kafka_local.main(argv)


# --- remediation: MDM integrations, actions, policy push -------------------------------------


def _operate(args: argparse.Namespace, name: str, params: dict[str, Any]) -> Any:
    """Run a store-backed operation here, or in the `driftline run` that holds the store."""
    import asyncio

    from driftline import embedded, operations

    settings = _settings(args)
    running = embedded.run_file(settings.data)
    clickhouse = getattr(args, "clickhouse", None)
    if clickhouse is None and running.exists():
        import httpx

        base = json.loads(running.read_text())["admin"]
        response = httpx.post(f"{base}/api/operations/{name}", json=params, timeout=600)
        if response.status_code == 400:
            raise ValueError(response.json()["error"])
        response.raise_for_status()
        return response.json()
    dsn = clickhouse or f"chdb://{embedded.store_path(settings.data).resolve()}"
    return asyncio.run(
        operations.run_local(dsn, settings.data, settings.integrations_file, name, params)
    )


def _integrations(args: argparse.Namespace) -> Any:
    from actions.integrations import IntegrationStore

    return IntegrationStore(_settings(args).integrations_file)


def _cmd_mdm_connect(args: argparse.Namespace) -> int:
    from actions.mdm import Integration
    from schemas.remediation import Vendor

    integration = _integrations(args).configure(
        Integration(
            tenant_id=args.tenant,
            vendor=Vendor(args.vendor),
            base_url=args.base_url.rstrip("/"),
            token_url=args.token_url,
            force_sync=args.force_sync,
            profile_id=args.profile_id,
            blueprint_id=args.blueprint_id,
        )
    )
    state = "with a credential" if integration.current else "push-only until `credentials set`"
    print(f"{integration.vendor.value} integration of tenant {integration.tenant_id}: {state}")
    return 0


def _cmd_mdm_credentials_set(args: argparse.Namespace) -> int:
    """The secret comes from a file or stdin, never argv (argv is visible to every user)."""
    from datetime import UTC, datetime

    from schemas.remediation import Vendor

    if args.secret_file is not None:
        secret = Path(args.secret_file).read_text(encoding="utf-8")
    else:
        if sys.stdin.isatty():
            print("secret (then Enter, Ctrl-D): ", end="", file=sys.stderr, flush=True)
        secret = sys.stdin.read()
    updated = _integrations(args).set_credential(
        args.tenant,
        Vendor(args.vendor),
        secret,
        datetime.now(UTC),
        client_id=args.client_id,
        grace=parse_duration(args.grace),
    )
    note = (
        f"; the previous one works until {updated.grace_until:%Y-%m-%d %H:%M}Z"
        if (updated.previous and updated.grace_until)
        else ""
    )
    print(f"credential set for {args.vendor} of tenant {args.tenant}{note}")
    return 0


def _cmd_mdm_credentials_status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    rows = [
        {
            "tenant_id": r.tenant_id,
            "vendor": r.vendor.value,
            "client_id": r.client_id,
            "set_at": r.set_at,
            "rotation_due": r.due_at,
            "state": r.state,
            "previous_until": r.previous_until,
        }
        for r in _integrations(args).status(datetime.now(UTC))
    ]
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
    else:
        _print_table(
            rows,
            [
                "tenant_id",
                "vendor",
                "client_id",
                "state",
                "set_at",
                "rotation_due",
                "previous_until",
            ],
        )
    return 0


def _cmd_mdm_import(args: argparse.Namespace) -> int:
    text = Path(args.file).read_text(encoding="utf-8-sig")
    result = _operate(
        args, "mdm-import", {"tenant": args.tenant, "vendor": args.vendor, "csv": text}
    )
    print(f"imported {result['imported']} {args.vendor} compliance records for {args.tenant}")
    return 0


def _cmd_mdm_pull(args: argparse.Namespace) -> int:
    result = _operate(args, "mdm-pull", {"tenant": args.tenant})
    for vendor, count in result["imported"].items():
        print(f"{vendor}: {count} compliance records imported")
    for vendor, why in result["errors"].items():
        print(f"{vendor}: not pulled: {why}", file=sys.stderr)
    return 1 if result["errors"] else 0


def _cmd_actions_run(args: argparse.Namespace) -> int:
    result = _operate(
        args,
        "actions-run",
        {
            "tenant": args.tenant,
            "live": args.live,
            "max_devices": args.max_devices,
            "cooldown": args.cooldown,
        },
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    mode = "DRY RUN (nothing sent; --live to act)" if result["dry_run"] else "LIVE"
    print(f"remediation for {result['tenant']}: {mode}")
    final = {}
    for step in result["steps"]:
        final[step["action_id"]] = step
    _print_table(
        list(final.values()),
        ["vendor", "device_id", "serial_number", "endpoint_id", "state", "reason", "detail"],
    )
    if result["unresolvable"]:
        print("\nendpoints with drift but no single MDM device (not acted on):")
        _print_table(result["unresolvable"], ["endpoint_id", "serial_number", "why"])
    print("\n" + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))
    return 1 if result["counts"]["failed"] else 0


def _cmd_actions_serve(args: argparse.Namespace) -> int:
    import uvloop

    from driftline.actions_runner import serve
    from driftline.embedded import store_path

    settings = _settings(args)
    dsn = args.clickhouse or f"chdb://{store_path(settings.data).resolve()}"
    uvloop.run(serve(settings, dsn, args.group, settle=args.settle))
    return 0


def _cmd_actions_switch(args: argparse.Namespace) -> int:
    switch = _settings(args).data / "actions.disabled"
    if args.actions_command == "stop":
        switch.parent.mkdir(parents=True, exist_ok=True)
        switch.write_text("remediation stopped by `driftline actions stop`\n")
        print(f"kill switch engaged ({switch}): no MDM action will be sent")
    else:
        switch.unlink(missing_ok=True)
        print("kill switch released: live runs may act again")
    return 0


def _cmd_policy_push(args: argparse.Namespace) -> int:
    result = _operate(
        args,
        "policy-push",
        {"tenant": args.tenant, "live": args.live, "force_sync": args.force_sync},
    )
    _print_table(
        result["entries"], ["vendor", "policy_version", "outcome", "detail", "payload_file"]
    )
    return 1 if any(e["outcome"] == "failed" for e in result["entries"]) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftline",
        description="Keep AI coding agents on managed laptops inside policy.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser(
        "ingest",
        help="run the OTLP receiver (gRPC :4317, HTTP :4318, admin :8888)",
        description="Authenticate OTLP exports by tenant token and publish one endpoint "
        "snapshot per resource to the bus.",
    )
    _add_setting_flags(ingest, *_SETTING_FLAGS)
    ingest.set_defaults(func=_cmd_ingest)

    tokens = commands.add_parser("tokens", help="issue, rotate, revoke and list ingest tokens")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create = token_commands.add_parser(
        "create", help="issue a token for a tenant (printed once, as the last line of stdout)"
    )
    create.add_argument("--tenant", required=True)
    create.set_defaults(func=_cmd_tokens_create)
    rotate = token_commands.add_parser(
        "rotate", help="issue a new token; the tenant's old tokens keep working for --grace"
    )
    rotate.add_argument("--tenant", required=True)
    rotate.add_argument("--grace", default="24h", help="e.g. 10m, 12h (default 24h)")
    rotate.set_defaults(func=_cmd_tokens_rotate)
    revoke = token_commands.add_parser("revoke", help="stop accepting a token at once")
    revoke.add_argument("token_id", help="the token id shown by `tokens list`")
    revoke.set_defaults(func=_cmd_tokens_revoke)
    listing = token_commands.add_parser("list", help="list tokens and their states (never secrets)")
    listing.add_argument("--tenant", default=None)
    listing.set_defaults(func=_cmd_tokens_list)
    for sub in (create, rotate, revoke, listing):
        _add_setting_flags(sub, "--data", "--tokens")
    _add_setting_flags(rotate, "--bus", "--bootstrap")

    run = commands.add_parser(
        "run",
        help="the embedded pipeline: receiver + detectors + store in one process, no Kafka",
        description="Receive OTLP, detect drift and keep history in the embedded ClickHouse "
        "(chDB) under --data. State survives restarts.",
    )
    _add_setting_flags(
        run, *(f for f in _SETTING_FLAGS if f not in ("--bus", "--bootstrap", "--workers"))
    )
    run.set_defaults(func=_cmd_run)

    policy = commands.add_parser("policy", help="publish and show tenant policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    policy_set = policy_commands.add_parser(
        "set", help="publish a tenant policy file (YAML or JSON) as its next version"
    )
    policy_set.add_argument("file", type=Path)
    policy_set.set_defaults(func=_cmd_policy_set)
    policy_show = policy_commands.add_parser("show", help="print a tenant's current policy")
    policy_show.add_argument("--tenant", required=True)
    policy_show.set_defaults(func=_cmd_policy_show)
    push = policy_commands.add_parser(
        "push", help="render the tenant's managed settings into its MDM profiles and update them"
    )
    push.add_argument("--tenant", required=True)
    push.add_argument("--live", action="store_true", help="update the profiles (else dry-run)")
    push.add_argument("--force-sync", action="store_true", help="then force-sync known devices")
    push.add_argument("--clickhouse", default=None, help="DSN of a ClickHouse server")
    push.set_defaults(func=_cmd_policy_push)
    _add_setting_flags(push, "--data")
    for sub in (policy_set, policy_show):
        _add_setting_flags(sub, "--data", "--tokens", "--bus", "--bootstrap")

    drift = commands.add_parser("drift", help="list open drift (one tenant, filters optional)")
    endpoint = commands.add_parser("endpoint", help="one endpoint's versions, attributes, flags")
    endpoint.add_argument("endpoint_id", help="tenant/identity, e.g. acme/C02XYZ")
    for sub in (drift, endpoint):
        sub.add_argument("--tenant", default=None, help="the tenant to look at")
        sub.add_argument("--all-tenants", action="store_true", help="administrators: no scoping")
        sub.add_argument(
            "--clickhouse", default=None, help="DSN, e.g. https://user:pass@host:8443/db"
        )
        sub.add_argument("--json", action="store_true", help="JSON for machines")
        _add_setting_flags(sub, "--data")
    drift.add_argument("--kind", choices=["outdated_client", "missing_policy", "stale_token"])
    drift.add_argument("--team", default=None)
    drift.add_argument("--service", default=None)
    drift.add_argument(
        "--remediation",
        action="store_true",
        help="force-synced devices instead: pending, remediated (time to remediate) or stuck",
    )
    drift.add_argument("--stuck-after", default="24h", help="with --remediation (default 24h)")
    drift.set_defaults(func=_cmd_drift)
    endpoint.set_defaults(func=_cmd_endpoint)

    processors = commands.add_parser("processors", help="drift processors on Kafka (Faust workers)")
    processor_commands = processors.add_subparsers(
        dest="processors_command", required=True, metavar="ACTION"
    )
    worker = processor_commands.add_parser(
        "worker", help="run one worker; start several to share the partitions"
    )
    _add_setting_flags(worker, "--data", "--bootstrap")
    worker.add_argument("--partitions", type=int, default=12, help="must match the input topics")
    worker.add_argument("--app-id", default="driftline-processors")
    worker.set_defaults(func=_cmd_processors_worker)

    sink = commands.add_parser(
        "sink", help="write Kafka snapshots, auth events and flags to ClickHouse"
    )
    _add_setting_flags(sink, "--data", "--bootstrap")
    sink.add_argument(
        "--clickhouse",
        default=None,
        help="DSN (default chdb://DATA/clickhouse; a server in production)",
    )
    sink.add_argument("--group", default="driftline-sink", help="Kafka consumer group")
    sink.set_defaults(func=_cmd_sink)

    mdm = commands.add_parser("mdm", help="MDM integrations, credentials and compliance reports")
    mdm_commands = mdm.add_subparsers(dest="mdm_command", required=True, metavar="ACTION")
    vendors = ["jamf", "intune", "iru"]
    connect = mdm_commands.add_parser(
        "connect", help="add or change a tenant's MDM integration (credentials kept)"
    )
    connect.add_argument("--tenant", required=True)
    connect.add_argument("--vendor", required=True, choices=vendors)
    connect.add_argument("--base-url", required=True, help="the MDM's API root")
    connect.add_argument("--token-url", default=None, help="Intune: the Entra token endpoint")
    connect.add_argument(
        "--force-sync", action="store_true", help="the customer granted the force-sync privilege"
    )
    connect.add_argument("--profile-id", default=None, help="the Claude Code profile's MDM id")
    connect.add_argument("--blueprint-id", default=None, help="Iru: blueprint of the profile")
    connect.set_defaults(func=_cmd_mdm_connect)
    credentials = mdm_commands.add_parser("credentials", help="set and check MDM credentials")
    credential_commands = credentials.add_subparsers(
        dest="credentials_command", required=True, metavar="ACTION"
    )
    cred_set = credential_commands.add_parser(
        "set", help="install a credential (secret from --secret-file or stdin, never argv)"
    )
    cred_set.add_argument("--tenant", required=True)
    cred_set.add_argument("--vendor", required=True, choices=vendors)
    cred_set.add_argument("--client-id", default=None, help="Jamf/Intune OAuth client id")
    cred_set.add_argument("--secret-file", default=None, help="read the secret from this file")
    cred_set.add_argument("--grace", default="7d", help="how long the replaced one still works")
    cred_set.set_defaults(func=_cmd_mdm_credentials_set)
    cred_status = credential_commands.add_parser(
        "status", help="credentials and rotation due dates (90 days, warning 14 days ahead)"
    )
    cred_status.add_argument("--json", action="store_true")
    cred_status.set_defaults(func=_cmd_mdm_credentials_status)
    mdm_import = mdm_commands.add_parser("import", help="import a compliance CSV export")
    mdm_import.add_argument("file", type=Path)
    mdm_import.add_argument("--vendor", required=True, choices=vendors)
    mdm_import.add_argument("--tenant", required=True)
    mdm_import.set_defaults(func=_cmd_mdm_import)
    pull = mdm_commands.add_parser("pull", help="import compliance through each MDM's API")
    pull.add_argument("--tenant", required=True)
    pull.set_defaults(func=_cmd_mdm_pull)
    for sub in (connect, cred_set, cred_status, mdm_import, pull):
        _add_setting_flags(sub, "--data")
    for sub in (mdm_import, pull):
        sub.add_argument("--clickhouse", default=None, help="DSN of a ClickHouse server")

    actions = commands.add_parser("actions", help="remediation: plan, act, stop")
    action_commands = actions.add_subparsers(
        dest="actions_command", required=True, metavar="ACTION"
    )
    actions_run = action_commands.add_parser(
        "run", help="plan force-syncs for a tenant and audit them (dry-run unless --live)"
    )
    actions_run.add_argument("--tenant", required=True)
    actions_run.add_argument("--live", action="store_true", help="send to the MDMs")
    actions_run.add_argument("--max-devices", type=int, default=100, help="cap per run")
    actions_run.add_argument("--cooldown", default="1h", help="per-device quiet time")
    actions_run.add_argument("--json", action="store_true")
    actions_run.add_argument("--clickhouse", default=None, help="DSN of a ClickHouse server")
    actions_run.set_defaults(func=_cmd_actions_run)
    actions_serve = action_commands.add_parser(
        "serve",
        help="Kafka deployment: remediate on new drift from driftline.flags (dry-run unless "
        "DRIFTLINE_ACTIONS_LIVE=1)",
    )
    _add_setting_flags(actions_serve, "--bootstrap")
    actions_serve.add_argument("--clickhouse", default=None, help="DSN of the ClickHouse server")
    actions_serve.add_argument("--group", default="driftline-actions", help="Kafka consumer group")
    actions_serve.add_argument(
        "--settle", type=float, default=2.0, help="seconds for the sink to store new flags"
    )
    actions_serve.set_defaults(func=_cmd_actions_serve)
    stop = action_commands.add_parser("stop", help="kill switch: no MDM action is sent")
    resume = action_commands.add_parser("resume", help="release the kill switch")
    for sub in (stop, resume):
        sub.set_defaults(func=_cmd_actions_switch)
    for sub in (actions_run, actions_serve, stop, resume):
        _add_setting_flags(sub, "--data")

    kafka = commands.add_parser("kafka", help="run a local single-node Kafka for development")
    kafka.add_argument("kafka_command", choices=["up", "down", "status"])
    kafka.add_argument("--port", type=int, default=None, help="default $KAFKA_PORT or 9092")
    kafka.add_argument("--kafka-data", type=Path, default=None, help="broker data directory")
    kafka.set_defaults(func=_cmd_kafka)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
