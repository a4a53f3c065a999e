"""The statement allowlist: analysis of a text (cached, identity-independent) and the
decision against one identity's rules and the catalog snapshot (cheap, on top, cached too).

`PolicyEngine` is the only entry point the pipeline and the CLI use.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.catalog import CatalogSnapshot
from gateway.config import PolicyConfig
from gateway.errors import rate_limited
from gateway.identity import Identity
from gateway.limits import TokenBucket
from gateway.policy.analysis import analyze
from gateway.policy.decision import Decision, decide
from gateway.policy.facts import Denial, StatementFacts, TableName

__all__ = ["Decision", "Denial", "PolicyEngine", "StatementFacts", "TableName"]


class PolicyEngine:
    """Decisions for (identity, statement text). A decision seen before is one dict lookup; a
    text seen before (by anyone) skips analysis; a new text costs up to a millisecond of CPU,
    so with `limit_misses` each identity may bring new texts only at `analysis_rate`."""

    def __init__(
        self, config: PolicyConfig, catalog: CatalogSnapshot | None = None, *, limit_misses: bool = False
    ) -> None:
        self.config = config
        self.catalog = catalog
        # Keyed by the exact text: the same bytes always mean the same statement.
        self._facts: OrderedDict[str, StatementFacts] = OrderedDict()
        # Decisions for the statements callers repeat, per identity and role (identities are
        # immutable and named uniquely; with a role claim one identity runs as several roles,
        # and where a role can create objects decides how names resolve). Bounded like the
        # analysis cache; emptied whole when full.
        self._decisions: dict[tuple[str, str, str], tuple[StatementFacts, Decision]] = {}
        self._miss_buckets: dict[str, TokenBucket] | None = {} if limit_misses else None

    def use_catalog(self, catalog: CatalogSnapshot | None) -> None:
        """Judge with another snapshot from now on; decisions made with the old one go."""
        self.catalog = catalog
        self._decisions = {}

    def facts(self, sql: str) -> StatementFacts:
        """The analysis of a text, from the cache when it was seen before."""
        facts = self._facts.get(sql)
        if facts is not None:
            self._facts.move_to_end(sql)
            return facts
        facts = self._facts[sql] = analyze(sql, self.config.max_statement_bytes)
        if len(self._facts) > self.config.analysis_cache_size:
            self._facts.popitem(last=False)
        return facts

    def decide(self, identity: Identity, sql: str) -> tuple[StatementFacts, Decision]:
        """Raises `rate_limited` when the identity is over its rate of new texts."""
        key = (identity.name, identity.role, sql)
        known = self._decisions.get(key)
        if known is not None:
            return known
        if sql not in self._facts:
            self._admit_analysis(identity)
        facts = self.facts(sql)
        result = facts, decide(identity, facts, self.catalog)
        if len(self._decisions) >= self.config.analysis_cache_size:
            self._decisions.clear()
        self._decisions[key] = result
        return result

    def _admit_analysis(self, identity: Identity) -> None:
        if self._miss_buckets is None:
            return
        bucket = self._miss_buckets.get(identity.name)
        if bucket is None:
            bucket = self._miss_buckets[identity.name] = TokenBucket(self.config.analysis_rate)
        wait = bucket.take()
        if wait > 0:
            raise rate_limited(
                f'identity "{identity.name}" is sending new statement texts faster than they are analysed for it '
                f"({self.config.analysis_rate:g}/s); reuse texts with parameters, or retry shortly",
                wait,
            )
