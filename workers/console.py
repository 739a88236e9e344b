"""`fleetwatch console serve`: the operations console's HTTP API (FastAPI, OpenAPI at /openapi.json) and page.

The API reads what the store holds (alerts and window reports fed from Kafka by `console_feeds`,
interventions, the audit log) and the model registry; it acts through the one `InterventionDesk`.
Every request is authenticated by a bearer JWT from `POST /api/login` and authorised by the one
permission table of `shared.console_auth`; the page keeps its token in session storage and sends it
as a header, never as a cookie, so no request is authorised by the browser on its own (no CSRF).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name closures.
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel, Field

from shared import alert_inbox, audit_log, interventions
from shared.automation_rules import AutomationRule, EntityBurstRule, SeverityRule
from shared.config import ConsoleSettings, FleetwatchSettings, dev_dir
from shared.console_auth import (
    AuthenticationFailed,
    LoginThrottle,
    PasswordCheckBusy,
    Permission,
    Principal,
    TokenIssuer,
    UserDirectory,
    signing_key,
)
from shared.console_store import ConsoleStore, UnstorableText
from shared.errors import FleetwatchError
from shared.interventions import (
    Action,
    InterventionDesk,
    InterventionRefused,
    InterventionRequest,
    ModelChange,
    ModelChangeUnrecorded,
)
from shared.logs import get_logger
from shared.metrics import CONSOLE_LOGINS
from shared.model_version import Manifest
from shared.registry import ModelRegistry, RefusedVersion
from shared.streams.catalog import CATALOG
from shared.thresholds import DetectorThresholds, ThresholdMethod

if TYPE_CHECKING:
    from workers.console_feeds import ConsoleFeeds

log = get_logger("fleetwatch.console")
PAGE_DIR = Path(__file__).with_name("console_page")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

Text = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
# Something besides spaces, and no NUL: a model action changes the registry before the store refuses one.
Reason = Annotated[str, Field(min_length=1, max_length=500, pattern=r"^[^\x00]*[^\x00\s][^\x00]*$")]


class LoginBody(BaseModel):
    username: Annotated[str, Field(min_length=1, max_length=100)]
    password: Annotated[str, Field(min_length=1, max_length=200)]


class TokenAnswer(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    username: str
    role: str
    permissions: list[str]


EntityAction = Literal["lock_account", "unlock_account", "block_transaction", "release_transaction", "require_step_up"]


class InterventionBody(BaseModel):
    action: EntityAction
    target: Text = Field(description="a user id (account actions) or an event id (transaction actions)")
    reason: Reason
    alert_id: Text | None = None


class LabelBody(BaseModel):
    verdict: Literal["true_positive", "false_positive"]
    reason: Reason


class PromoteBody(BaseModel):
    version: Annotated[int, Field(ge=1, le=2**31)]
    reason: Reason


class RollbackBody(BaseModel):
    reason: Reason
    from_version: Annotated[int | None, Field(ge=1, le=2**31)] = Field(
        None,
        description="the version the caller sees deployed: refused (409) when another is (a retry, a double click)",
    )


class ThresholdsBody(BaseModel):
    version: Annotated[int | None, Field(ge=1, le=2**31)] = Field(None, description="default: the deployed one")
    methods: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)], ThresholdMethod]
    reason: Reason


@dataclass
class ConsoleServices:
    """Everything the app needs, built once by `build_services` (or by a test)."""

    settings: ConsoleSettings
    streams: list[str]
    store: ConsoleStore
    users: UserDirectory
    issuer: TokenIssuer
    throttle: LoginThrottle
    registry: ModelRegistry | None
    desk: InterventionDesk = field(init=False)
    on_applied: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.desk = InterventionDesk(self.store, self._model_control if self.registry else None, self._applied)

    def known_streams(self) -> list[str]:
        """The configured streams and every catalog stream with a published version (a stream trained with
        `fleetwatch train --stream` while the console's configuration names it nowhere)."""
        return sorted(name for name in {*self.streams, *CATALOG} if self._knows(name))

    def _knows(self, stream: str) -> bool:
        """Configured (no registry call), or in the catalog with a published version."""
        return stream in self.streams or (
            stream in CATALOG and self.registry is not None and bool(self.registry.version_numbers(stream))
        )

    def _applied(self) -> None:
        for callback in self.on_applied:
            callback()

    def _model_control(self, request: InterventionRequest) -> ModelChange:
        """Promote, roll back or derive a version: the deployed version (and methods) before and after, and how to
        move the pointer back from the version this deployed, should the store fail to record it. A rollback moves
        the pointer only from the version it names (`from_version`), checked and moved in one Redis script, so
        neither a retry, a second console nor a trainer's deploy meanwhile is rolled back."""
        registry, stream = self.registry, request.target
        assert registry is not None
        if not self._knows(stream):
            raise InterventionRefused(f"unknown stream {stream!r}; streams: {', '.join(self.known_streams())}")
        deployed, history = registry.deployed_version(stream), registry.deployed_history(stream)
        before = {"deployed": deployed}

        def undo(moved_to: int | None) -> Callable[[], bool]:
            """Back from `moved_to` (None: this deployed nothing) to `before`, only while the pointer is there."""
            return lambda: moved_to is None or registry.move_back(stream, moved_to, deployed, history)

        try:
            if request.action is Action.PROMOTE_VERSION:
                version = int(request.params["version"])
                registry.promote(stream, version)
                return ModelChange(before, {"deployed": version}, undo(version))
            if request.action is Action.ROLLBACK_VERSION:
                from_version = request.params.get("from_version")
                rolled = registry.rollback(stream, None if from_version is None else int(from_version))
                skipped = [refused.version for refused in rolled.skipped]
                after = {"deployed": rolled.version, **({"skipped": skipped} if skipped else {})}
                return ModelChange(before, after, undo(rolled.version))
            base = request.params.get("version") or deployed
            if base is None:
                raise InterventionRefused(f"{stream} has no deployed version")
            derived = registry.derive_with_thresholds(stream, int(base), request.params["methods"])
            now = registry.deployed_version(stream)
            # Undone, a derived version stays published; it is moved from only if it was deployed (its base was).
            return ModelChange(
                {**before, "version": base},
                {
                    "deployed": now,
                    "version": derived.version,
                    "methods": {d.name: d.active_method for d in derived.detectors},
                },
                undo(derived.version if now == derived.version else None),
            )
        except InterventionRefused:
            raise
        except (FleetwatchError, ValueError) as exc:
            raise InterventionRefused(str(exc)) from exc

    def automation_rules(self) -> list[AutomationRule]:
        return default_rules(self.settings)


def default_rules(settings: ConsoleSettings) -> list[AutomationRule]:
    if not settings.automation:
        return []
    rules: list[AutomationRule] = []
    if settings.step_up_severity:
        rules += [
            SeverityRule(
                name=f"{settings.step_up_severity}-{stream}-step-up", stream=stream, severity=settings.step_up_severity
            )
            for stream in settings.step_up_streams
        ]
    if settings.lock_after_alerts:
        rules.append(
            EntityBurstRule(
                name="entity-burst-lock", alerts=settings.lock_after_alerts, within_s=settings.lock_window_s
            )
        )
    return rules


def build_services(settings: FleetwatchSettings, registry: ModelRegistry | None) -> ConsoleServices:
    console = settings.console
    store = ConsoleStore.open(console.store_url)
    key = signing_key(
        console.signing_key.get_secret_value() if console.signing_key else None, console.signing_key_file, dev_dir()
    )
    return ConsoleServices(
        settings=console,
        streams=sorted(settings.streams),
        store=store,
        users=UserDirectory(store),
        issuer=TokenIssuer(key, console.token_ttl_s),
        throttle=LoginThrottle(console.login_max_failures, console.login_window_s),
        registry=registry,
    )


def create_app(services: ConsoleServices, feeds: "ConsoleFeeds | None" = None) -> FastAPI:
    """The API and page over `services`; `feeds`, when the Kafka feeds run beside it, for the probes to report."""
    app = FastAPI(
        title="fleetwatch operations console",
        version="1",
        description="Alerts, model versions and window reports of the fleet; interventions with an audit trail.",
        docs_url=None,  # FastAPI's docs pages load their scripts from a CDN; the spec is at /openapi.json
        redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False, description="a JWT from POST /api/login")
    store = services.store

    @app.middleware("http")
    async def request_ids(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        given = request.headers.get("x-request-id", "")
        request.state.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        response.headers["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(InterventionRefused)
    async def refused(_request: Request, exc: InterventionRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(ModelChangeUnrecorded)
    async def unrecorded(_request: Request, exc: ModelChangeUnrecorded) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "undone": exc.undone}, status_code=500)

    @app.exception_handler(UnstorableText)
    async def unstorable(_request: Request, exc: UnstorableText) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> Response:
        """FastAPI's own answer, ASCII-escaped: its UTF-8 encoding fails (a 500) on a lone surrogate (`"\\ud800"`)
        in the input it echoes."""
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    def principal(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        if credentials is None:
            raise HTTPException(401, "log in first: Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
        try:
            return services.issuer.verify(credentials.credentials)
        except AuthenticationFailed as exc:
            raise HTTPException(401, str(exc), {"WWW-Authenticate": "Bearer"}) from exc

    def require(permission: Permission) -> Callable[[Principal], Principal]:
        def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
            if not who.may(permission):
                raise HTTPException(403, f"role {who.role.value} may not {permission.value}")
            return who

        return check

    def act(request: Request, who: Principal, action: Action, target: str, reason: str, **extra: Any) -> Any:
        outcome = services.desk.apply(
            InterventionRequest(
                action=action,
                target=target,
                reason=reason,
                actor=who.username,
                request_id=request.state.request_id,
                **extra,
            )
        )
        return msgspec.to_builtins(outcome.record)

    # --- authentication ----------------------------------------------------------------------------
    @app.post("/api/login", response_model=TokenAnswer, tags=["auth"], responses={401: {}, 429: {}, 503: {}})
    def login(body: LoginBody, request: Request) -> Any:
        """429 when this user and address failed too often (their doing); 503 when every password-hash slot is
        taken (the server's load, not the caller's attempts: not counted against them)."""
        address = request.client.host if request.client else "unknown"
        wait_s = services.throttle.admit(body.username, address)
        if wait_s > 0:
            CONSOLE_LOGINS.labels("throttled").inc()
            raise HTTPException(429, "too many login attempts; try later", {"Retry-After": str(int(wait_s) + 1)})
        try:
            who = services.users.authenticate(body.username, body.password)
        except PasswordCheckBusy as exc:
            services.throttle.withdraw(body.username, address)
            CONSOLE_LOGINS.labels("busy").inc()
            raise HTTPException(503, str(exc), {"Retry-After": "1"}) from exc
        except AuthenticationFailed as exc:
            CONSOLE_LOGINS.labels("refused").inc()
            raise HTTPException(401, str(exc)) from exc
        services.throttle.succeeded(body.username, address)
        CONSOLE_LOGINS.labels("ok").inc()
        return TokenAnswer(
            access_token=services.issuer.issue(who.username, who.role),
            expires_in=services.issuer.ttl_s,
            username=who.username,
            role=who.role.value,
            permissions=sorted(p.value for p in Permission if who.may(p)),
        )

    @app.get("/api/me", tags=["auth"])
    def me(who: Annotated[Principal, Depends(require(Permission.READ))]) -> dict[str, Any]:
        return {
            "username": who.username,
            "role": who.role.value,
            "permissions": sorted(p.value for p in Permission if who.may(p)),
        }

    # --- reading -----------------------------------------------------------------------------------
    @app.get("/api/alerts", tags=["alerts"])
    def alerts(
        _: Annotated[Principal, Depends(require(Permission.READ))],
        stream: Annotated[str | None, Query(max_length=100)] = None,
        detector: Annotated[str | None, Query(max_length=100, pattern=r"^[a-z0-9_]+$")] = None,
        severity: Annotated[Literal["low", "medium", "high"] | None, Query()] = None,
        entity: Annotated[str | None, Query(max_length=200)] = None,
        after: Annotated[
            int | None, Query(ge=0, le=2**62, description="only alerts stored after this seq, oldest first (polling)")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Newest first. A page polls with `after` = the highest `seq` it has and gets the next ones in order, oldest
        first; a full answer (`limit` alerts) means more are waiting: it asks again from the last one."""
        return alert_inbox.recent_alerts(
            store, stream=stream, detector=detector, severity=severity, entity=entity, after_seq=after, limit=limit
        )

    @app.get("/api/alerts/top", tags=["alerts"])
    def top(
        _: Annotated[Principal, Depends(require(Permission.READ))],
        n: Annotated[int, Query(ge=1, le=1000)] = 10,
        stream: Annotated[str | None, Query(max_length=100)] = None,
    ) -> list[dict[str, Any]]:
        """The n alerts with the highest severity score."""
        return alert_inbox.top_alerts(store, n, stream)

    @app.get("/api/alerts/{alert_id}", tags=["alerts"], responses={404: {}})
    def alert(alert_id: str, _: Annotated[Principal, Depends(require(Permission.READ))]) -> dict[str, Any]:
        """The alert's report: every detector's score against its threshold, standout features, the event,
        its label, and the controls currently set on its entity."""
        found = alert_inbox.alert_report(store, alert_id)
        if found is None:
            raise HTTPException(404, f"no alert {alert_id!r}")
        labels = store.rows("SELECT is_anomaly, labelled_by FROM alert_labels WHERE alert_id = ?", (alert_id,))
        found["label"] = (
            {
                "verdict": "true_positive" if labels[0]["is_anomaly"] else "false_positive",
                "by": labels[0]["labelled_by"],
            }
            if labels
            else None
        )
        found["controls"] = interventions.entity_controls(store, found["entity"])
        return found

    @app.get("/api/entities/{entity}", tags=["alerts"])
    def entity_history(
        entity: str,
        _: Annotated[Principal, Depends(require(Permission.READ))],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """An entity's alerts, the interventions on it, and its controls now."""
        return {
            "entity": entity,
            "controls": interventions.entity_controls(store, entity),
            "alerts": alert_inbox.recent_alerts(store, entity=entity, limit=limit),
            "interventions": [msgspec.to_builtins(r) for r in interventions.recent_interventions(store, entity, limit)],
        }

    @app.get("/api/models", tags=["models"])
    def models(_: Annotated[Principal, Depends(require(Permission.READ))]) -> list[dict[str, Any]]:
        """Per stream: the deployed version and every version with its evaluation and every threshold method, each
        with its false-positive rate and recall on the version's labelled test part where measured; a version that
        does not verify with only why it is `refused` (promoting it answers 409)."""
        if services.registry is None:
            return []
        return [_stream_versions(services.registry, stream) for stream in services.known_streams()]

    @app.get("/api/reports", tags=["reports"])
    def reports(
        _: Annotated[Principal, Depends(require(Permission.READ))],
        stream: Annotated[str | None, Query(max_length=100)] = None,
        window_s: Annotated[int | None, Query(ge=1, le=10**7)] = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    ) -> list[dict[str, Any]]:
        """Anomaly rate per window (from the summarizer's window reports), oldest first: the chart's series."""
        return alert_inbox.window_reports(store, stream, window_s, limit)

    @app.get("/api/window-alerts", tags=["reports"])
    def window_alert_list(
        _: Annotated[Principal, Depends(require(Permission.READ))],
        stream: Annotated[str | None, Query(max_length=100)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """The summarizer's rate alerts (a window's anomaly rate past its absolute or relative criterion) and
        entity escalations (an entity past its alert limit within a window), newest first."""
        return alert_inbox.window_alerts(store, stream, limit)

    @app.get("/api/interventions", tags=["interventions"])
    def intervention_list(
        _: Annotated[Principal, Depends(require(Permission.READ))],
        target: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return [msgspec.to_builtins(r) for r in interventions.recent_interventions(store, target, limit)]

    @app.get("/api/audit", tags=["audit"])
    def audit(
        _: Annotated[Principal, Depends(require(Permission.READ_AUDIT))],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """The newest audit records, newest first."""
        return [msgspec.to_builtins(e) for e in audit_log.latest_entries(store, limit)]

    @app.get("/api/audit/verify", tags=["audit"])
    def audit_verify(_: Annotated[Principal, Depends(require(Permission.READ_AUDIT))]) -> dict[str, Any]:
        """Check the whole hash chain: `ok`, how many records, the first broken one and why."""
        return msgspec.to_builtins(audit_log.verify_store(store))

    # --- acting ------------------------------------------------------------------------------------
    @app.post("/api/interventions", tags=["interventions"], status_code=201, responses={409: {}})
    def intervene(
        body: InterventionBody, request: Request, who: Annotated[Principal, Depends(require(Permission.INTERVENE))]
    ) -> Any:
        """Lock/unlock an account, block/release a transaction, require extra authentication."""
        return act(request, who, Action(body.action), body.target, body.reason, alert_id=body.alert_id)

    @app.post("/api/alerts/{alert_id}/label", tags=["alerts"], status_code=201, responses={409: {}})
    def label(
        alert_id: str,
        body: LabelBody,
        request: Request,
        who: Annotated[Principal, Depends(require(Permission.LABEL_ALERTS))],
    ) -> Any:
        """Mark the alert a true or false positive (a label for the trainer: `fleetwatch console export-labels`)."""
        action = Action.LABEL_TRUE_POSITIVE if body.verdict == "true_positive" else Action.LABEL_FALSE_POSITIVE
        return act(request, who, action, alert_id, body.reason, alert_id=alert_id)

    @app.post("/api/models/{stream}/promote", tags=["models"], status_code=201, responses={409: {}})
    def promote(
        stream: str,
        body: PromoteBody,
        request: Request,
        who: Annotated[Principal, Depends(require(Permission.MANAGE_MODELS))],
    ) -> Any:
        return act(request, who, Action.PROMOTE_VERSION, stream, body.reason, params={"version": body.version})

    @app.post("/api/models/{stream}/rollback", tags=["models"], status_code=201, responses={409: {}})
    def rollback(
        stream: str,
        body: RollbackBody,
        request: Request,
        who: Annotated[Principal, Depends(require(Permission.MANAGE_MODELS))],
    ) -> Any:
        params = {"from_version": body.from_version} if body.from_version is not None else {}
        return act(request, who, Action.ROLLBACK_VERSION, stream, body.reason, params=params)

    @app.post("/api/models/{stream}/thresholds", tags=["models"], status_code=201, responses={409: {}})
    def thresholds(
        stream: str,
        body: ThresholdsBody,
        request: Request,
        who: Annotated[Principal, Depends(require(Permission.MANAGE_MODELS))],
    ) -> Any:
        """A new version with these active threshold methods (deployed if its base was)."""
        methods = {name: method.value for name, method in body.methods.items()}
        params = {"version": body.version, "methods": methods}
        return act(request, who, Action.SET_THRESHOLDS, stream, body.reason, params=params)

    # --- probes and the page -----------------------------------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        """Live unless the Kafka feeds died: a restart is what brings them back."""
        if feeds is not None and feeds.died:
            return JSONResponse({"status": "the Kafka feeds stopped on an error; see the log"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        """Ready while the store answers: every request needs it. Kafka's state is reported, not required (a
        console without Kafka still shows stored alerts and takes interventions, which wait in the outbox)."""
        body: dict[str, Any] = {"status": "ready", "feeds": None if feeds is None else feeds.status()}
        try:
            store.rows("SELECT 1 AS answer")
        except Exception as exc:  # any failure of the store's driver means no request can be served
            # The driver's message can name hosts and users: in the log, not in this unauthenticated answer.
            log.warning("readiness: the console store does not answer", error=repr(exc))
            body["status"] = "the console store does not answer (see the log)"
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")
    return app


def _stream_versions(registry: ModelRegistry, stream: str) -> dict[str, Any]:
    """Each version, or why it is refused (`refused`: None for one that verifies)."""
    deployed = registry.deployed_version(stream)
    versions = [
        {"version": entry.version, "deployed": entry.version == deployed, "refused": entry.reason}
        if isinstance(entry, RefusedVersion)
        else _version(entry, deployed)
        for entry in registry.versions(stream)
    ]
    return {"stream": stream, "deployed": deployed, "methods": [m.value for m in ThresholdMethod], "versions": versions}


def _version(manifest: Manifest, deployed: int | None) -> dict[str, Any]:
    """Each detector's `rates`: per threshold method, its false-positive rate and recall on the version's labelled
    test part (measured at training; none for a version trained without labels), so a person picks informed."""
    rates = (manifest.evaluation or {}).get("threshold_methods", {})
    return {
        "version": manifest.version,
        "parent_version": manifest.parent_version,
        "created_at": manifest.created_at,
        "deployed": manifest.version == deployed,
        "refused": None,
        "note": manifest.note,
        "evaluation": manifest.evaluation,
        "detectors": [
            {
                "name": entry.name,
                "mode": entry.mode,
                "active_method": entry.active_method,
                "thresholds": {
                    method.value: offset
                    for method, offset in DetectorThresholds.from_dict(entry.thresholds).offsets.items()
                },
                "rates": rates.get(entry.name, {}),
            }
            for entry in manifest.detectors
        ],
    }


def proxy_options(console: ConsoleSettings) -> dict[str, Any]:
    """uvicorn's forwarded-header handling, on for the configured proxies only: its own default trusts
    127.0.0.1, so any local process could name a new client address at every login guess, and never an
    ingress, so behind one every client shares its address."""
    trusted = [str(network) for network in console.trusted_proxies]
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


def serve(settings: FleetwatchSettings) -> None:
    """Run the console: the store, the Kafka feeds and the HTTPS server, until SIGINT/SIGTERM."""
    import uvicorn

    from shared.dev_tls import ensure_dev_certificate
    from shared.registry import open_registry
    from workers.console_feeds import ConsoleFeeds, FeedTopics

    console = settings.console
    services = build_services(settings, open_registry(settings))
    feeds = ConsoleFeeds(
        connection=settings.kafka_connection(),
        topics=FeedTopics(
            settings.topics.alerts, settings.topics.reports, console.interventions_topic, console.audit_topic
        ),
        store=services.store,
        desk=services.desk,
        rules=services.automation_rules(),
        group_id=console.group_id,
    )
    services.on_applied.append(feeds.wake)
    tls: dict[str, Any] = {}
    if console.tls:
        cert, key = (
            (console.tls_cert_file, console.tls_key_file)
            if console.tls_cert_file and console.tls_key_file
            else ensure_dev_certificate(dev_dir())
        )
        tls = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    log.info("console starting", url=f"{'https' if console.tls else 'http'}://{console.host}:{console.port}/")
    feeds.start()
    try:
        uvicorn.run(
            create_app(services, feeds), host=console.host, port=console.port, log_level="warning",
            **tls, **proxy_options(console),
        )  # fmt: skip
    finally:
        feeds.stop()
        services.store.close()
