"""One request for one caller: token -> identity -> policy -> limits -> transaction ->
statements -> commit -> audit. Every endpoint goes through it; wire formats live in
`gateway.api` and only decode requests and encode what comes back.

`Pipeline` holds the long-lived parts built from the configuration; `RequestScope` is one
request's journey through them, and writes exactly one audit record when it closes. Requests
that run statements follow one sequence, `RequestScope.execute`, handing each result to the
wire format's `Results`; `/v1/explain` and `/v1/whoami` stop after judging and after
authenticating.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway import grants, json_text
from gateway.approvals import ApprovalRequest, ApprovalStore, Principal, decide
from gateway.audit import AuditRecord, AuditSink
from gateway.auth import TokenVerifier, VerifiedToken
from gateway.catalog import absent_rule_tables
from gateway.config import ApprovalConfig, GatewayConfig
from gateway.credentials import CredentialBroker, IssuedCredential, Login, iso_time
from gateway.db.catalog import NOTIFY_CATALOG_CHANGED, CatalogKeeper
from gateway.db.pool import Database
from gateway.db.session import StatementRun, Transaction, TransactionSettings
from gateway.errors import (
    GatewayError,
    approval_not_found,
    bad_request,
    credentials_not_allowed,
    policy_denied,
    statement_refused,
)
from gateway.identity import Identity, IdentityResolver
from gateway.limits import IdentityLimits
from gateway.metrics import GatewayMetrics
from gateway.policy import Decision, PolicyEngine, StatementFacts
from gateway.policy.workers import AnalysisPool
from gateway.secrets import SecretStore
from gateway.shared_limits import SharedLimits

FETCH_BATCH_ROWS = 5000
# After the grace period the process exits within a second. Cut requests get this long to
# unwind (each is audited as it does), and the whole shutdown from then on this long: past
# it, the process logs every thread's stack and exits without waiting further.
UNWIND_SECONDS = 0.25
STOP_DEADLINE_SECONDS = 0.7
# The audit record's `endpoint` for a login the reaper dropped: no request asked for it.
REAPER_ENDPOINT = "credentials reaper"
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")

logger = logging.getLogger("gateway")


@dataclass(frozen=True)
class Statement:
    sql: str
    params: list[Any]


@dataclass(frozen=True)
class TransactionOptions:
    isolation: str = "read committed"
    read_only: bool = False
    deferrable: bool = False


@dataclass(frozen=True)
class Call:
    """What a wire format decoded from a request that runs statements."""

    authorization: str | None
    statements: list[Statement]
    options: TransactionOptions = TransactionOptions()
    batch: bool = False  # answered as a batch (a result per statement), were it held for approval
    # False for a wire format that has no answer for a held request (the Neon protocol): a
    # statement a rule holds for approval is refused there, and nothing is held.
    may_hold: bool = True


class Results(Protocol):
    """A wire format's encoder, handed each statement's run in turn as the pipeline runs it."""

    async def take(self, judged: Judged, run: StatementRun) -> bool:
        """Read (and encode) `run`. True when the results keep the run to read later, as a
        stream: they then commit when it has been read to its end."""
        ...


@dataclass(frozen=True)
class Caller:
    token: VerifiedToken
    identity: Identity


@dataclass
class Judged:
    statement: Statement
    facts: StatementFacts
    decision: Decision

    def refusal(self) -> GatewayError | None:
        """Why the statement may not run, as far as it is decided before the database is
        reached, or None: the policy decision, then parameters numbered $1..$n with none
        skipped, then exactly as many sent. `/v1/query` raises it, `/v1/explain` reports it."""
        decision = self.decision
        if not decision.allowed:
            reason = decision.reason or "statement not allowed"
            if decision.sqlstate is not None:  # what PostgreSQL itself would answer
                return statement_refused(reason, decision.sqlstate, decision.position)
            return policy_denied(reason)
        expected = self.facts.param_count
        used = self.facts.params_used
        if used != frozenset(range(1, expected + 1)):
            missing = sorted(set(range(1, expected + 1)) - used)
            return bad_request(f"parameters must be numbered $1..$n with none skipped; ${missing[0]} is unused")
        if expected != len(self.statement.params):
            return bad_request(f"the statement uses {expected} parameters but {len(self.statement.params)} were sent")
        return None

    def verdict(self) -> dict[str, Any]:
        """What an explanation answers (`/v1/explain`, MCP's explain tool): what the decision
        covers (kind, tables, columns, functions), and the verdict a run would give before the
        database is reached: `allowed`, and the `reason` its error would carry."""
        refusal = self.refusal()
        reason = None if refusal is None else refusal.message
        return {**self.decision.as_json(), "allowed": refusal is None, "reason": reason}


def _approval_of(judged: list[Judged]) -> ApprovalConfig | None:
    """What approving the statements takes together, or None when none of them needs it."""
    needed: ApprovalConfig | None = None
    for item in judged:
        approval = item.decision.approval
        if approval is not None:
            needed = approval if needed is None else needed.combined(approval)
    return needed


# Request and trace ids need to be unique, not secret: a seeded PRNG instead of a system
# call per id.
_ids = random.Random(os.urandom(16))


def request_id_from(header: str | None) -> str:
    return header if header and SANE_REQUEST_ID.match(header) else f"{_ids.getrandbits(64):016x}"


def trace_id_from(traceparent: str | None) -> str:
    match = TRACEPARENT.match(traceparent or "")
    if match and match.group(1) != "0" * 32:
        return match.group(1)
    return f"{_ids.getrandbits(128):032x}"


def _on_sighup(callback: Callable[[], None]) -> None:
    """`kill -HUP` reopens the audit file (log rotation) and re-reads the catalog snapshot.
    Only a server's main thread can receive signals; elsewhere (tests, embedding) this is
    skipped."""
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, callback)


class Pipeline:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        verifier: TokenVerifier,
        identities: IdentityResolver,
        policy: PolicyEngine,
        database: Database,
        audit: AuditSink,
        metrics: GatewayMetrics,
        limits: IdentityLimits | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.identities = identities
        self.policy = policy
        self.database = database
        self.audit = audit
        self.limits = limits or IdentityLimits(config)
        self.metrics = metrics
        # One per identity, role (several with a role claim) and transaction mode: a small,
        # bounded set.
        self._transaction_settings: dict[tuple[str, str, TransactionOptions], TransactionSettings] = {}
        self.catalog = CatalogKeeper(
            database,
            config.identity_roles(),
            policy.use_catalog,
            config.policy.catalog_refresh or None,
            config.policy.catalog_read_timeout,
        )
        self._open_scopes: set[RequestScope] = set()
        self.approvals = ApprovalStore(database, config.approvals.schema)
        self.credentials = (
            None
            if config.credentials is None
            else CredentialBroker(config, config.credentials, on_expired=self._audit_expiry)
        )

    @classmethod
    def from_config(cls, config: GatewayConfig, secrets: SecretStore | None = None) -> Pipeline:
        secrets = secrets or config.secret_store()
        metrics = GatewayMetrics(shared_limits=config.limits.redis_url is not None)
        workers = AnalysisPool(
            config.policy.analysis_workers,
            config.policy.analysis_timeout,
            config.policy.max_statement_bytes,
            on_timeout=metrics.analysis_timeouts.inc,
        )
        shared = (
            None
            if config.limits.redis_url is None
            else SharedLimits(config, secrets, on_state=metrics.shared_limits_state)
        )
        limits = IdentityLimits(config, shared)
        return cls(
            config,
            verifier=TokenVerifier.from_config(config, secrets),
            identities=IdentityResolver.from_config(config),
            policy=PolicyEngine(config.policy, limit_misses=True, workers=workers, misses=limits.misses),
            database=Database(config.database, secrets, on_hold=metrics.connection_hold.observe),
            audit=AuditSink(
                config.audit.sink,
                chain=config.audit.chain,
                summary=config.audit.summary,
                replica=config.server.replica,
            ),
            metrics=metrics,
            limits=limits,
        )

    async def start(self) -> None:
        _on_sighup(self._hangup)
        if self.policy.workers is not None:
            await self.policy.workers.start()
        await self.database.open()
        if self.config.database.check_login_role:
            await self.database.check_login_role(self.config.identity_roles())
        await self.catalog.start()
        for warning in absent_rule_tables(self.config.identities, self.catalog.present_relations()):
            logger.warning(warning)
        await self.limits.start()
        await grants.report_excess_privileges(self.config, self.database, self.metrics)
        await self.verifier.start(on_fetch=self._count_key_fetch)
        if self.credentials is not None:
            await self.credentials.start()

    def _audit_expiry(self, login: Login) -> None:
        """The audit record of a temporary login the reaper dropped."""
        record = AuditRecord(
            requestId=request_id_from(None),
            traceId=trace_id_from(None),
            endpoint=REAPER_ENDPOINT,
            identity=login.marker.identity,
            role=login.marker.role,
            kind="credentials.expire",
            reason=f"expired at {iso_time(login.expires_at)}",
            status=200,
            credential=login.user,
        )
        self.audit.write(record)

    def _count_key_fetch(self, issuer: str, outcome: str) -> None:
        self.metrics.jwks_refreshes.labels(issuer, outcome).inc()

    async def stop(self) -> None:
        """Shut down, the server having stopped taking requests and cancelled those still
        open when its grace period ran out. Every connection is terminated first (PostgreSQL
        rolls back the transaction of a connection that closes), so that nothing waits on the
        database from now on, answering or not; then each open request's task is waited for
        as it unwinds, closing its request — it knows what it sent — and auditing it before
        the audit sink closes."""
        deadline = exit_if_not_done_within(STOP_DEADLINE_SECONDS)
        try:
            self.database.terminate()
            tasks = {scope.task for scope in self._open_scopes} - {None, asyncio.current_task()}
            if tasks:
                await asyncio.wait(tasks, timeout=UNWIND_SECONDS)
            if self.credentials is not None:
                await self.credentials.stop()
            if self.policy.workers is not None:
                await self.policy.workers.stop()
            await self.catalog.stop()
            await self.limits.stop()
            await self.verifier.close()
            await self.database.close()
            self.audit.close()
        finally:
            deadline.cancel()

    def _hangup(self) -> None:
        self.audit.reopen()
        self.catalog.want_refresh()

    def transaction_settings(self, identity: Identity, options: TransactionOptions) -> TransactionSettings:
        key = (identity.name, identity.role, options)
        settings = self._transaction_settings.get(key)
        if settings is None:
            db = self.config.database
            settings = self._transaction_settings[key] = TransactionSettings(
                role=identity.role,
                schemas=identity.schemas,
                statement_timeout_ms=round(identity.statement_timeout * 1000),
                lock_timeout_ms=round(db.lock_timeout * 1000),
                idle_timeout_ms=round(db.idle_in_transaction_timeout * 1000),
                isolation=options.isolation,
                read_only=identity.read_only or options.read_only,
                deferrable=options.deferrable,
            )
        return settings

    def scope(
        self,
        endpoint: str,
        *,
        request_id: str,
        trace_id: str,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> RequestScope:
        record = AuditRecord(
            requestId=request_id, traceId=trace_id, endpoint=endpoint, clientIp=client_ip, userAgent=user_agent
        )
        scope = RequestScope(self, record)
        self._open_scopes.add(scope)
        return scope


class _Phase:
    """Adds the time spent inside a `with` block to one phase of `Server-Timing` and the
    latency metrics, whether the block returns or raises."""

    __slots__ = ("_name", "_started", "_timings")

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self._timings = timings
        self._name = name

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        self._timings[self._name] += time.perf_counter() - self._started


def exit_if_not_done_within(seconds: float) -> threading.Timer:
    """The shutdown's last resort, on a thread of its own so that nothing the event loop waits
    on can hold it up; cancel the timer it returns when done."""

    def exit_now() -> None:
        logger.error("shutdown did not finish within %gs; exiting now (stacks follow)", seconds)
        faulthandler.dump_traceback(all_threads=True)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, exit_now)
    timer.daemon = True
    timer.start()
    return timer


@dataclass(eq=False)
class RequestScope:
    """One request's journey. Use `authenticate`, `judge`, `open_transaction`, `run`,
    `commit`, and always `close` (which rolls back what was not committed and audits)."""

    pipeline: Pipeline
    record: AuditRecord
    caller: Caller | None = None
    judged: list[Judged] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {"auth": 0.0, "policy": 0.0, "db": 0.0})
    transaction: Transaction | None = None
    error: GatewayError | None = None  # what the request failed with, if it failed
    task: asyncio.Task | None = field(default_factory=asyncio.current_task)  # serving the request
    _exit_stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    _closed: bool = False

    @property
    def request_id(self) -> str:
        return self.record.requestId

    async def authenticate(self, authorization: str | None) -> Caller:
        """Verified claims -> identity. Awaits only for a token whose key must be fetched."""
        with _Phase(self.timings, "auth"):
            token = await self.pipeline.verifier.verify_header(authorization)
            self.record.issuer = token.issuer
            sub = token.claims.get("sub")
            self.record.sub = sub if isinstance(sub, str) else None
            identity = self.pipeline.identities.resolve(token.issuer, token.claims)
        self.record.identity = identity.name
        self.record.role = identity.role
        self.caller = Caller(token, identity)
        return self.caller

    async def explain(self, statement: Statement) -> Judged:
        """The policy decision without enforcing it (`Judged.refusal` says what would be),
        never made with a snapshot older than DDL the gateway has committed."""
        assert self.caller is not None
        await self.pipeline.catalog.settled()
        with _Phase(self.timings, "policy"):
            facts, decision = await self.pipeline.policy.decide_bounded(self.caller.identity, statement.sql)
        judged = Judged(statement, facts, decision)
        self.judged.append(judged)
        self._note_decision(judged)
        return judged

    async def judge(self, statement: Statement) -> Judged:
        """The decision, enforced: the statement's `refusal`, if any, is raised."""
        judged = await self.explain(statement)
        refusal = judged.refusal()
        if refusal is not None:
            raise refusal
        return judged

    async def execute(self, call: Call, results: Results) -> ApprovalRequest | None:
        """The sequence every request that runs statements follows: authenticate, judge each
        statement (all of them before any runs), admit, open the transaction, run each and
        hand it to `results`, commit. `close` then ends it: rollback of what was not
        committed, the connection back, the audit record and the metrics. A call that a rule
        holds for approval is stored instead of run, and its pending request returned."""
        await self.authenticate(call.authorization)
        judged = [await self.judge(statement) for statement in call.statements]
        approval = _approval_of(judged)
        if approval is not None:
            if not call.may_hold:
                raise policy_denied(
                    f"this needs approval by {', '.join(approval.approvers)}, which this endpoint cannot wait for: "
                    "send it to /v1/query or /v1/batch, which hold it and answer 202 with the request's id"
                )
            return await self._hold_for_approval(call, approval)
        await self._run_judged(call.options, judged, results)
        return None

    async def execute_approved(self, request: ApprovalRequest, results: Results) -> None:
        """An approved request's statements, once: as its requester (the identity its claims,
        as stored, resolve to now, which must still be the one that asked), judged again by
        the current policy, then the same sequence as `execute`."""
        self.record.approval = request.id
        requester = request.requester
        claims = json_text.loads(requester.claims_json.encode())
        token = VerifiedToken(requester.issuer, claims, 0.0, requester.claims_json)
        self.record.issuer, self.record.sub = requester.issuer, requester.subject
        identity = self.pipeline.identities.resolve(requester.issuer, claims)
        self.record.identity, self.record.role = identity.name, identity.role
        if identity.name != requester.identity:
            raise policy_denied(
                f'the requester\'s claims now map to identity "{identity.name}", not "{requester.identity}"'
            )
        self.caller = Caller(token, identity)
        statements = [Statement(item["sql"], item["params"]) for item in request.statements]
        judged = [await self.judge(statement) for statement in statements]
        await self._run_judged(TransactionOptions(**request.options), judged, results)

    def _principal(self) -> Principal:
        """The authenticated caller, as an approval request records who asked or decided."""
        assert self.caller is not None
        token, identity = self.caller.token, self.caller.identity
        return Principal(identity.name, token.issuer, self.record.sub, identity.role, token.claims_json)

    async def _hold_for_approval(self, call: Call, approval: ApprovalConfig) -> ApprovalRequest:
        with _Phase(self.timings, "db"):
            request = await self.pipeline.approvals.create(
                self._principal(),
                [{"sql": statement.sql, "params": statement.params} for statement in call.statements],
                batch=call.batch,
                options=dataclasses.asdict(call.options),
                approval=approval,
                tables=self.record.tables,
                request_id=self.request_id,
            )
        self.record.approval = request.id
        self.record.reason = f"awaits approval by {', '.join(approval.approvers)} until {request.expires_at}"
        self.record.status = 202
        return request

    async def _run_judged(self, options: TransactionOptions, judged: list[Judged], results: Results) -> None:
        await self.open_transaction(options)
        for item in judged:
            if await results.take(item, await self.run(item)):
                return  # streamed: the results commit once they are read to the end
        await self.commit()

    async def pending_approvals(self, authorization: str | None) -> list[ApprovalRequest]:
        """Authenticate, then the unexpired pending requests the caller's identity may decide."""
        caller = await self.authenticate(authorization)
        self.record.kind = "approval.list"
        return await self.pipeline.approvals.pending_for(caller.identity.name)

    async def read_approval(self, authorization: str | None, approval_id: str) -> tuple[ApprovalRequest, bool]:
        """Authenticate, then one request for its requester (True: its outcome may be shown)
        or for one of its approvers (False); anyone else is told it does not exist."""
        caller = await self.authenticate(authorization)
        self.record.kind, self.record.approval = "approval.read", approval_id
        request = await self.pipeline.approvals.get(approval_id)
        if request is not None:
            requester = self._principal()
            if request.made_by(requester.identity, requester.issuer, requester.subject):
                return request, True
            if caller.identity.name in request.approvers:
                return request, False
        raise approval_not_found(approval_id)

    async def decide_approval(
        self, authorization: str | None, approval_id: str, approve: bool, comment: str | None
    ) -> ApprovalRequest:
        """Authenticate, then approve (the request is claimed to run now: `execute_approved`)
        or reject it; the audit record is the decision's."""
        await self.authenticate(authorization)
        self.record.kind = "approval.approve" if approve else "approval.reject"
        self.record.approval = approval_id
        self.record.reason = comment
        return await decide(self.pipeline.approvals, approval_id, approve, self._principal(), comment)

    async def issue_credential(self, authorization: str | None, ttl: float | None) -> IssuedCredential:
        """Authenticate, then a temporary database login for the caller's identity."""
        broker, identity = await self._credentials_caller(authorization, "credentials.issue")
        issued = await broker.issue(identity, ttl)
        self.record.credential = issued.user
        self.record.reason = f"valid until {iso_time(issued.expires_at)}"
        return issued

    async def list_credentials(self, authorization: str | None) -> list[Login]:
        """Authenticate, then the identity's unexpired temporary logins."""
        broker, identity = await self._credentials_caller(authorization, "credentials.list")
        return await broker.active(identity)

    async def revoke_credential(self, authorization: str | None, user: str) -> None:
        """Authenticate, then end one of the identity's temporary logins now."""
        broker, identity = await self._credentials_caller(authorization, "credentials.revoke")
        self.record.credential = user
        await broker.revoke(identity, user)

    async def _credentials_caller(self, authorization: str | None, kind: str) -> tuple[CredentialBroker, Identity]:
        """The broker and the caller's identity, which must have `[identities.credentials]`."""
        caller = await self.authenticate(authorization)
        self.record.kind = kind
        broker, identity = self.pipeline.credentials, caller.identity
        if broker is None or identity.credentials is None:
            raise credentials_not_allowed(identity.name)
        return broker, identity

    def _note_decision(self, judged: Judged) -> None:
        record = self.record
        facts, decision = judged.facts, judged.decision
        record.kind = record.kind or facts.kind
        record.tables = sorted({*record.tables, *decision.tables})
        record.fingerprint = record.fingerprint or facts.fingerprint or None
        if record.decision != "deny":
            record.decision = "allow" if decision.allowed else "deny"
            record.reason = decision.reason

    async def open_transaction(self, options: TransactionOptions) -> Transaction:
        assert self.caller is not None
        identity = self.caller.identity
        settings = self.pipeline.transaction_settings(identity, options)
        setup = settings.setup_statements(
            f"gw {self.record.requestId[:24]} {self.record.traceId}", self.caller.token.claims_json
        )
        # DDL may leave temporary objects behind, a function outside the safe list session
        # settings, locks or sequence state.
        full_reset = any(judged.decision.resets_session for judged in self.judged)
        with _Phase(self.timings, "db"):
            await self._exit_stack.enter_async_context(self.pipeline.limits.admit(identity))
            transaction = Transaction(self.pipeline.database, settings, setup, full_reset=full_reset)
            self._exit_stack.push_async_callback(transaction.close)
            await transaction.begin()
        self.transaction = transaction
        return transaction

    async def run(self, judged: Judged) -> StatementRun:
        assert self.transaction is not None and self.caller is not None
        first = min(self.caller.identity.max_rows + 1, FETCH_BATCH_ROWS)
        with _Phase(self.timings, "db"):
            return await self.transaction.run(judged.statement.sql, judged.statement.params, first, FETCH_BATCH_ROWS)

    async def commit(self) -> None:
        """COMMIT. After DDL, the snapshot is read again before any further decision, and
        every gateway listening on the database is told (in the same message as COMMIT)."""
        assert self.transaction is not None
        if not any(judged.facts.kind == "ddl" for judged in self.judged):
            with _Phase(self.timings, "db"):
                await self.transaction.commit()
            return
        async with self.pipeline.catalog.changing():
            with _Phase(self.timings, "db"):
                await self.transaction.commit(announce=NOTIFY_CATALOG_CHANGED)

    def fail(self, error: GatewayError) -> None:
        """Record what the request failed with; every wire format calls this before writing
        the error. For an identity whose rules narrow columns, the fields where PostgreSQL
        quotes rows go first: they may show columns the identity cannot read."""
        if self.caller is not None and self.caller.identity.narrows_columns:
            error.withhold_row_data()
        self.error = error
        self.record.status = error.status
        self.record.sqlstate = error.sqlstate

    async def close(self, status: int | None = None) -> None:
        """Roll back anything uncommitted, return the connection, write the audit record."""
        if self._closed:
            return
        self._closed = True
        if status is not None:
            self.record.status = status
        try:
            await self._exit_stack.aclose()
        finally:
            try:
                self.pipeline.audit.write(self.record)
                self.pipeline.metrics.observe(self)
            finally:
                self.pipeline._open_scopes.discard(self)

    def elapsed(self) -> float:
        return time.perf_counter() - self.record.started

    def server_timing(self) -> str:
        parts = [f"{name};dur={seconds * 1000:.2f}" for name, seconds in self.timings.items()]
        return ", ".join([*parts, f"total;dur={self.elapsed() * 1000:.2f}"])
