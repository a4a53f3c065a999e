"""Pending approvals: statements that a rule with `approval` holds back until an approver
approves them, kept in PostgreSQL so that every replica sees the same requests.

Owns the approvals table (its DDL, run by `gateway setup` with the admin login) and every read
and write of it, through the gateway's own login outside any request's role switch: storing a
request, what an approver may decide, deciding it (one conditional UPDATE, so a request runs at
most once across approvers and replicas), and keeping its outcome. Running the statement is the
pipeline's (`RequestScope.execute_approved`); the wire format is `gateway.api.approvals`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from gateway.config import ApprovalConfig
from gateway.db.pool import Database
from gateway.errors import approval_decided, approval_expired, approval_not_found, own_approval

TABLE = "approvals"
# Reading or writing one request: a few index lookups, never a wait on another request's lock
# longer than an UPDATE of the same row.
STORE_TIMEOUT_SECONDS = 5.0
ISO_UTC = """'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"""


def table_statements(schema: str, login: str) -> list[str]:
    """What `gateway setup` runs, in one transaction: the schema and table, nobody's privileges
    on them but the gateway login's (no identity role is ever granted anything here)."""
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
        f"""CREATE TABLE IF NOT EXISTS {schema}.{TABLE} (
            id text PRIMARY KEY,
            status text NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'rejected')),
            identity text NOT NULL,
            issuer text NOT NULL,
            subject text,
            role text NOT NULL,
            claims text NOT NULL,
            statements text NOT NULL,
            batch boolean NOT NULL,
            options text NOT NULL,
            approvers text NOT NULL,
            tables text NOT NULL,
            request_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            decided_by text,
            decided_subject text,
            decided_at timestamptz,
            comment text,
            result text,
            error text,
            finished_at timestamptz
        )""",
        f"CREATE INDEX IF NOT EXISTS approvals_pending ON {schema}.{TABLE} (expires_at) WHERE status = 'pending'",
        f"REVOKE ALL ON {schema}.{TABLE} FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA {schema} TO {login}",
        f"GRANT SELECT, INSERT, UPDATE ON {schema}.{TABLE} TO {login}",
    ]


@dataclass(frozen=True)
class Principal:
    """A verified caller as a request records it: who asked (enough to run the statement as
    them later), or who decides."""

    identity: str
    issuer: str
    subject: str | None
    role: str
    claims_json: str


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    status: str  # pending, running, done, failed, rejected; or expired (pending past expires_at)
    requester: Principal
    statements: list[dict[str, Any]]  # [{"sql", "params"}]
    batch: bool
    options: dict[str, Any]
    approvers: tuple[str, ...]
    tables: tuple[str, ...]
    created_at: str
    expires_at: str
    decided_by: str | None
    decided_at: str | None
    comment: str | None
    result: str | None  # the answer's JSON, in /v1/query's (or /v1/batch's) shape, until expires_at
    error: str | None  # the error body's JSON, when it failed

    def made_by(self, identity: str, issuer: str, subject: str | None) -> bool:
        requester = self.requester
        return (requester.identity, requester.issuer, requester.subject) == (identity, issuer, subject)

    def summary(self) -> dict[str, Any]:
        """What the requester is answered (202) and what every view of a request starts with."""
        return {
            "id": self.id,
            "status": self.status,
            "expiresAt": self.expires_at,
            "statement": None if self.batch else self.statements[0]["sql"],
            "identity": self.requester.identity,
        }

    def details(self) -> dict[str, Any]:
        """What its requester and its approvers see: the statements with their parameters,
        who asked, who may decide, and the decision once made."""
        requester = self.requester
        return {
            **self.summary(),
            "statements": self.statements,
            "requester": {"identity": requester.identity, "issuer": requester.issuer, "subject": requester.subject},
            "role": requester.role,
            "tables": list(self.tables),
            "approvers": list(self.approvers),
            "createdAt": self.created_at,
            "decision": None
            if self.decided_by is None
            else {"by": self.decided_by, "at": self.decided_at, "comment": self.comment},
        }


class ApprovalStore:
    """The approvals table, read and written as the gateway's login on a pooled connection
    (no transaction is open on it, so no identity role is in effect)."""

    def __init__(self, database: Database, schema: str) -> None:
        self.database = database
        self.table = f"{schema}.{TABLE}"
        self._columns = (
            "id, CASE WHEN status = 'pending' AND expires_at <= now() THEN 'expired' ELSE status END AS status, "
            "identity, issuer, subject, role, claims, statements, batch::text AS batch, options, approvers, tables, "
            f"to_char(created_at AT TIME ZONE 'UTC', {ISO_UTC}) AS created_at, "
            f"to_char(expires_at AT TIME ZONE 'UTC', {ISO_UTC}) AS expires_at, decided_by, "
            f"to_char(decided_at AT TIME ZONE 'UTC', {ISO_UTC}) AS decided_at, comment, "
            "CASE WHEN expires_at > now() THEN result END AS result, error"
        )

    async def exists(self) -> bool:
        async with self.database.connection() as connection:
            found = await connection.fetchval("SELECT pg_catalog.to_regclass($1)::text", self.table)
        return found is not None

    async def create(
        self,
        requester: Principal,
        statements: list[dict[str, Any]],
        *,
        batch: bool,
        options: dict[str, Any],
        approval: ApprovalConfig,
        tables: list[str],
        request_id: str,
    ) -> ApprovalRequest:
        values = [
            str(uuid.uuid4()),
            requester.identity,
            requester.issuer,
            requester.subject,
            requester.role,
            requester.claims_json,
            _json(statements),
            "true" if batch else "false",
            _json(options),
            _json(list(approval.approvers)),
            _json(tables),
            request_id,
            str(approval.ttl),
        ]
        sql = (
            f"INSERT INTO {self.table} (id, status, identity, issuer, subject, role, claims, statements, batch, "
            "options, approvers, tables, request_id, expires_at) VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, "
            f"$8::boolean, $9, $10, $11, $12, now() + $13::float8 * interval '1 second') RETURNING {self._columns}"
        )
        created = await self._one(sql, *values)
        assert created is not None  # an INSERT ... RETURNING returns its row
        return created

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        rows = await self._read(f"SELECT {self._columns} FROM {self.table} WHERE id = $1", approval_id)
        return _request(rows[0]) if rows else None

    async def pending_for(self, approver: str) -> list[ApprovalRequest]:
        sql = (
            f"SELECT {self._columns} FROM {self.table} WHERE status = 'pending' AND expires_at > now() "
            "AND approvers::jsonb ? $1 ORDER BY created_at"
        )
        return [_request(row) for row in await self._read(sql, approver)]

    async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of a read. Without the table there is no request to find: the gateway starts
        without it when no rule asks for approval (`gateway setup` has not run)."""
        async with self.database.connection() as connection:
            try:
                return await connection.fetch(sql, *args, timeout=STORE_TIMEOUT_SECONDS)
            except asyncpg.UndefinedTableError:
                return []

    async def decide(
        self, approval_id: str, status: str, approver: str, subject: str | None, comment: str | None
    ) -> ApprovalRequest | None:
        """Pending -> `status` ("running" to run it now, or "rejected"), by `approver`; None
        when it is no longer pending or has expired: whoever changed it first decided it."""
        sql = (
            f"UPDATE {self.table} SET status = $2, decided_by = $3, decided_subject = $4, comment = $5, "
            "decided_at = now() WHERE id = $1 AND status = 'pending' AND expires_at > now() "
            f"RETURNING {self._columns}"
        )
        return await self._one(sql, approval_id, status, approver, subject, comment)

    async def finish(self, approval_id: str, *, result: bytes | None, error: dict[str, Any] | None) -> None:
        """Running -> done (with the answer) or failed (with the error body)."""
        sql = (
            f"UPDATE {self.table} SET status = $2, result = $3, error = $4, finished_at = now() "
            "WHERE id = $1 AND status = 'running'"
        )
        status = "failed" if error is not None else "done"
        text = None if result is None else result.decode()
        async with self.database.connection() as connection:
            await connection.execute(
                sql, approval_id, status, text, None if error is None else _json(error), timeout=STORE_TIMEOUT_SECONDS
            )

    async def _one(self, sql: str, *args: Any) -> ApprovalRequest | None:
        async with self.database.connection() as connection:
            row = await connection.fetchrow(sql, *args, timeout=STORE_TIMEOUT_SECONDS)
        return None if row is None else _request(row)


async def decide(
    store: ApprovalStore,
    approval_id: str,
    approve: bool,
    approver: Principal,
    comment: str | None,
) -> ApprovalRequest:
    """The decision of `approver` on one request: never by its requester, and refused unless
    it is one of the request's approvers (told as not found); a request decided already, or
    expired, cannot be decided again."""
    request = await store.get(approval_id)
    if request is None:
        raise approval_not_found(approval_id)
    if request.made_by(approver.identity, approver.issuer, approver.subject):
        raise own_approval(approval_id)
    if approver.identity not in request.approvers:
        raise approval_not_found(approval_id)
    status = "running" if approve else "rejected"
    decided = await store.decide(approval_id, status, approver.identity, approver.subject, comment)
    if decided is not None:
        return decided
    now = await store.get(approval_id)
    if now is not None and now.status == "expired":
        raise approval_expired(approval_id)
    raise approval_decided(approval_id, now.status if now is not None else "gone")


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _request(row: Any) -> ApprovalRequest:
    requester = Principal(row["identity"], row["issuer"], row["subject"], row["role"], row["claims"])
    return ApprovalRequest(
        id=row["id"],
        status=row["status"],
        requester=requester,
        statements=orjson.loads(row["statements"]),
        batch=row["batch"] == "true",
        options=orjson.loads(row["options"]),
        approvers=tuple(orjson.loads(row["approvers"])),
        tables=tuple(orjson.loads(row["tables"])),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        decided_by=row["decided_by"],
        decided_at=row["decided_at"],
        comment=row["comment"],
        result=row["result"],
        error=row["error"],
    )


async def setup_store(connection: asyncpg.Connection, schema: str, login: str) -> None:
    """`gateway setup`: the table and its grants, in one transaction (run again: no change)."""
    async with connection.transaction():
        for statement in table_statements(schema, login):
            await connection.execute(statement)
