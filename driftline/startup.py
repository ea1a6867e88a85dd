"""What `driftline run` prints when it is up: where it listens, where its data is, what next.

A pure function of what the process knows at start, so the wording is tested without ports or
files. A new user reads this block and nothing else: each "next" line is a command to paste.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from driftline.settings import Settings

EXAMPLE_TENANT = "acme"


@dataclass(frozen=True)
class StartupFacts:
    host: str
    grpc_port: int
    http_port: int
    admin_port: int
    data: Path  # absolute
    program: str  # how to call this command again, e.g. ".venv/bin/driftline"
    data_flag: bool  # whether the commands need `--data DATA` (not the default directory)
    token_tenants: tuple[str, ...]  # tenants with an active ingest token
    policy_tenants: tuple[str, ...]  # tenants with a published policy
    live: bool = False  # remediation acts on the MDMs (else dry-run)
    console: str | None = None  # the console's address, once there is one


def _address(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - we describe the bind address, not choose it
        return f"http://{host or '0.0.0.0'}:{port} (every interface)"  # noqa: S104
    return f"http://{host}:{port}"


def startup_block(facts: StartupFacts) -> str:
    """The lines `driftline run` prints once it is ready."""
    data_flag = f" --data {shlex.quote(str(facts.data))}" if facts.data_flag else ""

    def command(*words: str) -> str:
        return " ".join([facts.program, *words]) + data_flag

    mode = "live" if facts.live else "dry-run (DRIFTLINE_ACTIONS_LIVE=1 to act on the MDMs)"
    lines = [
        "Driftline is running: receiver, drift detectors, store and remediation in one process.",
        f"  OTLP gRPC   {_address(facts.host, facts.grpc_port)}",
        f"  OTLP HTTP   {_address(facts.host, facts.http_port)}  (/v1/metrics, /v1/logs)",
        f"  admin       {_address(facts.host, facts.admin_port)}  (/healthz, /readyz, /metrics)",
    ]
    if facts.console is not None:
        lines.append(f"  console     {facts.console}")
    lines += [
        f"  data        {facts.data}",
        f"  remediation {mode}",
    ]
    without_policy = [t for t in facts.token_tenants if t not in facts.policy_tenants]
    if not facts.token_tenants:
        tenant = EXAMPLE_TENANT
        lines += [
            "Next: create an ingest token for a tenant (printed once, as the last line):",
            f"  {command('tokens', 'create', '--tenant', shlex.quote(tenant))}",
            'then send telemetry with it (README, "Send telemetry"):',
            f"  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{facts.grpc_port}"
            ' OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer <token>"',
        ]
    elif without_policy:
        tenant = without_policy[0]
        lines += [
            f"Next: publish a policy for tenant {tenant} (format: README, "
            '"Then publish a policy"):',
            f"  {command('policy', 'set', shlex.quote(tenant + '.yaml'))}",
        ]
    else:
        tenant = facts.token_tenants[0]
        lines += [
            "Ask what drifted:",
            f"  {command('drift', '--tenant', shlex.quote(tenant))}",
        ]
    return "\n".join(lines)


def gather(settings: Settings, console: str | None = None) -> StartupFacts:
    """The facts, read from the settings, the token registry and the policy directory."""
    import time

    from driftline.policies import PolicyDirectory
    from ingest.tokens import TokenState, TokenStore

    now = time.time()
    tokens = TokenStore(settings.token_registry).records()
    active = dict.fromkeys(r.tenant_id for r in tokens if r.state(now) is TokenState.ACTIVE)
    policies = PolicyDirectory(settings.data / "policies").all()
    return StartupFacts(
        host=settings.host,
        grpc_port=settings.grpc_port,
        http_port=settings.http_port,
        admin_port=settings.admin_port,
        data=settings.data.resolve(),
        program=program(),
        data_flag=settings.data.resolve() != Settings.model_validate({}).data.resolve(),
        token_tenants=tuple(active),
        policy_tenants=tuple(p.tenant for p in policies),
        live=settings.actions_live,
        console=console,
    )


def program() -> str:
    """`driftline` when that is what the shell finds, else the path this was started by."""
    import os
    import shutil
    import sys

    started = Path(sys.argv[0])
    if started.name != "driftline":  # python -m driftline.cli
        return f"{shlex.quote(sys.executable)} -m driftline.cli"
    found = shutil.which("driftline")
    if found and Path(found).resolve() == started.resolve():
        return "driftline"
    relative = os.path.relpath(started)
    return shlex.quote(str(started.resolve()) if relative.startswith("..") else relative)
