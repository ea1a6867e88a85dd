"""The console's pages (an aiohttp sub-app under /console/) and its admin API routes.

Every page needs a session; a session comes only from a one-time sign-in link, which only the
admin token can ask for (`driftline console url`). Pages answer this machine only and refuse a
foreign Host (DNS rebinding); forms that change anything need the session's CSRF token and a
same-origin Origin. Every store read is aggregated or paginated in ClickHouse and runs in a
thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

import jinja2
from aiohttp import web

from driftline import admin_auth
from driftline.console import auth, svg
from driftline.rotation import RotationProgress, rotation_progress
from ingest.tokens import TokenState, TokenStore
from store import console as queries

log = logging.getLogger(__name__)

COOKIE: Final = "driftline_console"
_LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes a form post send Origin: null
    "Cache-Control": "no-store",
}
_MAX_PAGE: Final = 100_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Console:
    """What the console reads and whom it lets in."""

    client: Any  # a store client of the console's own (clickhouse_connect Client)
    connect: Callable[[], Any]  # a fresh store client, for read-only SQL sessions
    data: Path
    admin_token: str
    token_registry: Path | None = None
    links: auth.SignInLinks = field(default_factory=auth.SignInLinks)
    sessions: auth.Sessions = field(default_factory=auth.Sessions)

    async def read(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(function, self.client, *args, **kwargs)


CONSOLE_KEY: Final = web.AppKey("console", Console)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("driftline.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["dt"] = lambda v: "" if v is None else f"{v:%Y-%m-%d %H:%M}"
    env.filters["duration"] = human_duration
    env.filters["epoch"] = lambda v: None if v is None else datetime.fromtimestamp(v, UTC)
    env.filters["number"] = lambda v: "" if v is None else f"{v:,}"
    return env


def human_duration(seconds: float | None) -> str:
    """2.0 h, 35 min, 12 s, 1.5 d (pure)."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def host_is_local(host: str | None) -> bool:
    """The Host header names this machine (not a rebound DNS name)."""
    if not host:
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in _LOCAL_HOSTS


def _from_this_machine(request: web.Request) -> bool:
    return admin_auth.same_machine(request.remote, admin_auth.local_address(request))


def _page(request: web.Request) -> int:
    try:
        return min(max(int(request.query.get("page", "1")), 1), _MAX_PAGE)
    except ValueError:
        return 1


def _session(request: web.Request) -> auth.Session | None:
    session: auth.Session | None = request.get(_SESSION)
    return session


_SESSION: Final = "console.session"


def _refuse(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=dict(_SECURITY_HEADERS))


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Local callers, a local Host, a session for every page; CSRF and Origin for every POST."""
    if not _from_this_machine(request):
        return _refuse(403, "the console answers this machine only")
    if not host_is_local(request.host):
        return _refuse(403, "unexpected Host")
    console = request.app[CONSOLE_KEY]
    public = request.path in (
        "/console/sign-in",
        "/console/signed-out",
        "/console/static/console.css",
    )
    if not public:
        session = console.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return _refuse(
                401, "Not signed in. Ask for a link with `driftline console url [--tenant T]`."
            )
        request[_SESSION] = session
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            if origin != f"{request.scheme}://{request.host}":
                return _refuse(403, "cross-origin request refused")
            form = await request.post()
            presented = form.get("csrf")
            if not session.csrf_matches(presented if isinstance(presented, str) else None):
                return _refuse(403, "missing or wrong CSRF token")
    response = await handler(request)
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _render(request: web.Request, template: str, **context: Any) -> web.Response:
    env: jinja2.Environment = request.app[_ENV]
    session = _session(request)
    tenants = request.get(_TENANTS, [])
    html = env.get_template(template).render(
        session=session,
        path=request.path,
        query=request.query,
        tenant=request.query.get("tenant", ""),
        known_tenants=tenants if session is not None and session.scope.admin else [],
        **context,
    )
    return web.Response(text=html, content_type="text/html")


_ENV: Final = web.AppKey("console.env", jinja2.Environment)
_TENANTS: Final = "console.tenants"


def _scope(request: web.Request) -> tuple[str, ...] | None:
    session = _session(request)
    assert session is not None  # the guard put it there
    try:
        return session.scope.narrowed(request.query.get("tenant") or None)
    except PermissionError as error:
        raise web.HTTPForbidden(text=str(error)) from None


def _pages(total: int, page: int, size: int = queries.PAGE_SIZE) -> dict[str, int]:
    last = max(math.ceil(total / size), 1)
    return {"page": min(page, last), "last": last, "total": total, "size": size}


async def _known_tenants(request: web.Request) -> None:
    session = _session(request)
    if session is not None and session.scope.admin:
        console = request.app[CONSOLE_KEY]
        request[_TENANTS] = await console.read(queries.known_tenants)


async def fleet_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    tenants = _scope(request)
    await _known_tenants(request)
    fleet: queries.Fleet = await console.read(queries.fleet, tenants)
    kinds = {row["kind"]: row for row in fleet.by_kind}
    team_totals: dict[str, int] = {}
    for row in fleet.by_team:
        team_totals[row["team"]] = team_totals.get(row["team"], 0) + int(row["flags"])
    return _render(
        request,
        "fleet.html",
        title="Fleet",
        fleet=fleet,
        kinds=kinds,
        series_chart=svg.line_chart(fleet.series, "Open drift, last 30 days"),
        kind_chart=svg.bar_chart(
            [(r["kind"], int(r["flags"])) for r in fleet.by_kind], "Open drift by kind"
        ),
        team_chart=svg.bar_chart(
            sorted(team_totals.items(), key=lambda kv: (-kv[1], kv[0]))[:12], "Open drift by team"
        ),
    )


async def endpoints_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    tenants = _scope(request)
    await _known_tenants(request)
    q = request.query
    where = queries.EndpointFilter(
        search=q.get("q", "")[:200],
        team=q.get("team", ""),
        kind=q.get("kind", ""),
        version=q.get("version", ""),
        status=q.get("status", "") if q.get("status") in ("drifting", "compliant") else "",
    )
    page = _page(request)
    total, rows = await console.read(queries.endpoints, tenants, where, page)
    choices = await console.read(queries.filter_choices, tenants)
    return _render(
        request,
        "endpoints.html",
        title="Endpoints",
        rows=rows,
        where=where,
        choices=choices,
        pages=_pages(total, page),
    )


async def endpoint_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    session = _session(request)
    assert session is not None
    endpoint_id = request.query.get("id", "")
    story = await console.read(queries.endpoint, session.scope.tenants, endpoint_id)
    if story is None:
        raise web.HTTPNotFound(text=f"no endpoint {endpoint_id!r} in your tenants")
    return _render(request, "endpoint.html", title=endpoint_id, story=story)


async def remediation_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    tenants = _scope(request)
    await _known_tenants(request)
    page = _page(request)
    total, log_rows = await console.read(queries.remediation_log, tenants, page)
    summary = await console.read(queries.remediation_summary, tenants)
    counts = await console.read(queries.audit_counts, tenants)
    syncs = await console.read(queries.recent_syncs, tenants)
    return _render(
        request,
        "remediation.html",
        title="Remediation",
        rows=log_rows,
        summary=summary,
        counts=counts,
        syncs=syncs,
        pages=_pages(total, page),
    )


async def tokens_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    tenants = _scope(request)
    await _known_tenants(request)
    page = _page(request)
    total, stale = await console.read(queries.still_on_old_token, tenants, page)
    rejected = await console.read(queries.rejected_tokens, tenants)
    registry = await asyncio.to_thread(_registry, console.token_registry, tenants)
    progress = None
    if registry["available"]:
        progress = await _rotation_progress(console, tenants, registry["records"])
    still_total = len(progress.still) if progress else 0
    pages = _pages(max(total, still_total), page)
    start = (pages["page"] - 1) * pages["size"]
    return _render(
        request,
        "tokens.html",
        title="Tokens",
        stale=stale,
        stale_total=total,
        rejected=rejected,
        registry=registry,
        progress=progress,
        still=progress.still[start : start + pages["size"]] if progress else [],
        pages=pages,
    )


async def _rotation_progress(
    console: Console, tenants: tuple[str, ...] | None, records: list[Any]
) -> RotationProgress:
    """During a rotation's grace window: who is still on the retiring token, who moved."""
    now = datetime.now(UTC).timestamp()
    rotating = sorted({r.tenant_id for r in records if r.state(now) is TokenState.GRACE})
    seen = await console.read(queries.latest_tokens, tenants, rotating) if rotating else []
    progress = rotation_progress(records, seen, now)
    for row in progress.still:
        row["grace_ends"] = datetime.fromtimestamp(row["grace_ends"], UTC)
    return progress


def _registry(path: Path | None, tenants: tuple[str, ...] | None) -> dict[str, Any]:
    """Token ids, states and rotations from the registry (never tokens: it holds hashes)."""
    if path is None or not path.exists():
        return {"available": False, "tokens": [], "rotations": [], "records": []}
    registry = TokenStore(path)
    now = datetime.now(UTC).timestamp()

    def mine(tenant: str) -> bool:
        return tenants is None or tenant in tenants

    records = [r for r in registry.records() if mine(r.tenant_id)]
    tokens = [
        {
            "tenant_id": r.tenant_id,
            "token_id": r.token_id,
            "state": (r.state(now) or "forgotten"),
            "created_at": datetime.fromtimestamp(r.created_at, UTC),
            "expires_at": datetime.fromtimestamp(r.expires_at, UTC) if r.expires_at else None,
        }
        for r in records
    ]
    rotations = [
        {
            "tenant_id": r.tenant_id,
            "rotated_at": datetime.fromtimestamp(r.rotated_at, UTC),
            "grace_ends": datetime.fromtimestamp(r.grace_ends, UTC),
            "new_token_id": r.new_token_id,
        }
        for r in registry.rotations()
        if mine(r.tenant_id)
    ]
    return {"available": True, "tokens": tokens, "rotations": rotations[::-1], "records": records}


async def policies_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    tenants = _scope(request)
    await _known_tenants(request)
    changelog = await console.read(queries.policy_changelog, tenants)
    from driftline.policies import PolicyDirectory

    directory = PolicyDirectory(console.data / "policies")
    policies = [
        {
            "tenant": p.tenant,
            "version": p.version,
            "json": json.dumps(json.loads(p.to_json()), indent=2),
        }
        for p in await asyncio.to_thread(directory.all)
        if tenants is None or p.tenant in tenants
    ]
    return _render(
        request, "policies.html", title="Policies", policies=policies, changelog=changelog
    )


async def sign_in(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    scope = console.links.redeem(request.query.get("token", ""))
    if scope is None:
        return _refuse(
            403,
            "This sign-in link is unknown, used or expired. Ask for a new one with "
            "`driftline console url`.",
        )
    session_id, _ = console.sessions.create(scope)
    response = web.HTTPSeeOther("/console/")
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(console.sessions.ttl),
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    console.sessions.end(request.cookies.get(COOKIE, ""))
    response = web.HTTPSeeOther("/console/signed-out")
    response.del_cookie(COOKIE, path="/console")
    return response


async def signed_out(_: web.Request) -> web.Response:
    return _refuse(401, "Signed out.")


async def stylesheet(_: web.Request) -> web.Response:
    css = resources.files("driftline.console").joinpath("static/console.css").read_text()
    return web.Response(text=css, content_type="text/css", headers={"Cache-Control": "max-age=300"})


def console_app(console: Console) -> web.Application:
    """The pages, to mount with ``app.add_subapp("/console/", console_app(…))``."""
    app = web.Application(middlewares=[guard])
    app[CONSOLE_KEY] = console
    app[_ENV] = _templates()
    app.add_routes(
        [
            web.get("/", fleet_page),
            web.get("/endpoints", endpoints_page),
            web.get("/endpoint", endpoint_page),
            web.get("/remediation", remediation_page),
            web.get("/tokens", tokens_page),
            web.get("/policies", policies_page),
            web.get("/sign-in", sign_in),
            web.post("/sign-out", sign_out),
            web.get("/signed-out", signed_out),
            web.get("/static/console.css", stylesheet),
        ]
    )
    return app


# --- the admin API: what the CLI asks the running process --------------------------------


def _api_refusal(request: web.Request, console: Console) -> web.Response | None:
    """Admin token, this machine, a local Host, JSON, and no browser (no Origin header)."""
    if not _from_this_machine(request):
        return web.json_response({"error": "local callers only"}, status=403)
    if not host_is_local(request.host):
        return web.json_response({"error": "unexpected Host"}, status=403)
    if "Origin" in request.headers:
        return web.json_response({"error": "browsers may not call this API"}, status=403)
    if not admin_auth.verify(
        admin_auth.bearer(request.headers.get("Authorization")), console.admin_token
    ):
        return web.json_response({"error": "admin token required"}, status=401)
    if request.content_type != "application/json":
        return web.json_response({"error": "send JSON"}, status=415)
    return None


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def api_routes(console: Console) -> list[web.RouteDef]:
    """``POST /api/console/{sign-in-links,sql,query,report}`` for the CLI."""

    def endpoint(
        work: Callable[[web.Request, dict[str, Any]], Awaitable[Any]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            if (refusal := _api_refusal(request, console)) is not None:
                return refusal
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("send a JSON object")
                return web.json_response(await work(request, body), dumps=_dumps)
            except (ValueError, PermissionError) as error:
                return web.json_response({"error": str(error)}, status=400)

        return handle

    async def sign_in_link(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        tenant = body.get("tenant")
        if tenant is not None:
            await _require_known(console, str(tenant))
        scope = auth.Scope(None if tenant is None else (str(tenant),))
        token, ttl = console.links.issue(scope)
        return {
            "url": f"{request.scheme}://{request.host}/console/sign-in?token={token}",
            "expires_in_s": ttl,
            "scope": scope.label(),
        }

    async def sql(_: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        from store import readonly

        tenant = str(body.get("tenant") or "")
        await _require_known(console, tenant)
        columns, rows = await asyncio.to_thread(
            readonly.run, console.connect, str(body["sql"]), [tenant], body.get("params") or {}
        )
        return {"columns": columns, "rows": rows}

    async def saved(_: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        from driftline.console import reports

        tenant = str(body.get("tenant") or "")
        await _require_known(console, tenant)
        columns, rows = await asyncio.to_thread(
            reports.run_saved, console.connect, str(body["name"]), tenant, body.get("params") or {}
        )
        return {"columns": columns, "rows": rows}

    async def report(_: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        from driftline.console import reports

        tenant = str(body.get("tenant") or "")
        await _require_known(console, tenant)
        result: dict[str, Any] = await asyncio.to_thread(reports.build, console.client, tenant)
        return result

    return [
        web.post("/api/console/sign-in-links", endpoint(sign_in_link)),
        web.post("/api/console/sql", endpoint(sql)),
        web.post("/api/console/query", endpoint(saved)),
        web.post("/api/console/report", endpoint(report)),
    ]


async def _require_known(console: Console, tenant: str) -> None:
    """An unknown tenant is an error, not an empty page."""
    if not tenant:
        raise ValueError("name a tenant with --tenant")
    known = set(await console.read(queries.known_tenants))
    if console.token_registry is not None and console.token_registry.exists():
        from ingest.tokens import TokenStore

        known |= {r.tenant_id for r in TokenStore(console.token_registry).records()}
    if tenant not in known:
        raise ValueError(f"unknown tenant {tenant!r}: no tokens, endpoints or flags of it")
