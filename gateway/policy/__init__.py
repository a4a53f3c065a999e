"""The statement allowlist: analysis of a text (cached, identity-independent) and the
decision against one identity's rules and the catalog snapshot (cheap, on top, cached too).

`PolicyEngine` is the only entry point the pipeline and the CLI use. The gateway decides
with `decide_bounded`: a text the caches know is judged inline, a new one is analysed in a
worker process within `analysis_timeout` (`gateway.policy.workers`). Offline tools and
tests decide inline with `decide`.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.catalog import CatalogSnapshot
from gateway.config import PolicyConfig
from gateway.errors import analyser_busy, rate_limited
from gateway.identity import Identity
from gateway.limits import RateBuckets
from gateway.policy.analysis import analyze
from gateway.policy.decision import Decision, decide
from gateway.policy.facts import Denial, StatementFacts, TableName
from gateway.policy.workers import TOO_SLOW, AnalyserBusy, AnalysisPool

# Facts that say more about the moment than about the text: never cached with the text.
TRANSIENT_DENIALS = frozenset({TOO_SLOW, "internal"})

__all__ = ["Decision", "Denial", "PolicyEngine", "StatementFacts", "TableName"]


class PolicyEngine:
    """Decisions for (identity, statement text). A decision seen before is one dict lookup; a
    text seen before (by anyone) skips analysis; a new text costs up to a millisecond of CPU,
    so with `limit_misses` each identity may bring new texts only at `analysis_rate` (counted in
    `misses`, shared across replicas when they are, else in this engine)."""

    def __init__(
        self,
        config: PolicyConfig,
        catalog: CatalogSnapshot | None = None,
        *,
        limit_misses: bool = False,
        workers: AnalysisPool | None = None,
        misses: RateBuckets | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.workers = workers
        # Keyed by the exact text: the same bytes always mean the same statement.
        self._facts: OrderedDict[str, StatementFacts] = OrderedDict()
        # Decisions for the statements callers repeat, per identity and role (identities are
        # immutable and named uniquely; with a role claim one identity runs as several roles,
        # and where a role can create objects decides how names resolve). Bounded like the
        # analysis cache; emptied whole when full.
        self._decisions: dict[tuple[str, str, str], tuple[StatementFacts, Decision]] = {}
        self._misses = (misses or RateBuckets("misses")) if limit_misses else None

    def use_catalog(self, catalog: CatalogSnapshot | None) -> None:
        """Judge with another snapshot from now on; decisions made with the old one go."""
        self.catalog = catalog
        self._decisions = {}

    def facts(self, sql: str) -> StatementFacts:
        """The analysis of a text, from the cache when it was seen before, else done here."""
        facts = self._cached_facts(sql)
        if facts is None:
            facts = self._remember_facts(sql, analyze(sql, self.config.max_statement_bytes))
        return facts

    def decide(self, identity: Identity, sql: str) -> tuple[StatementFacts, Decision]:
        """Raises `rate_limited` when the identity is over its rate of new texts."""
        known = self._decisions.get((identity.name, identity.role, sql))
        if known is not None:
            return known
        if sql not in self._facts and self._misses is not None:
            self._refuse_analysis(identity, self._misses.take_local(identity.name, self.config.analysis_rate))
        return self._decided(identity, sql, self.facts(sql))

    async def decide_bounded(self, identity: Identity, sql: str) -> tuple[StatementFacts, Decision]:
        """`decide`, with a new text analysed off the event loop, within the time budget.
        Raises `rate_limited` as `decide` does, and `analyser_busy` (503) when no worker
        frees up in time."""
        assert self.workers is not None, "decide_bounded needs the analysis workers"
        known = self._decisions.get((identity.name, identity.role, sql))
        if known is not None:
            return known
        facts = self._cached_facts(sql)
        if facts is None:
            if self._misses is not None:
                self._refuse_analysis(identity, await self._misses.take(identity.name, self.config.analysis_rate))
            try:
                facts = self._remember_facts(sql, await self.workers.analyse(sql))
            except AnalyserBusy:
                raise analyser_busy() from None
        return self._decided(identity, sql, facts)

    def _decided(self, identity: Identity, sql: str, facts: StatementFacts) -> tuple[StatementFacts, Decision]:
        result = facts, decide(identity, facts, self.catalog)
        if facts.denial is not None and facts.denial.category in TRANSIENT_DENIALS:
            return result
        if len(self._decisions) >= self.config.analysis_cache_size:
            self._decisions.clear()
        self._decisions[(identity.name, identity.role, sql)] = result
        return result

    def _cached_facts(self, sql: str) -> StatementFacts | None:
        facts = self._facts.get(sql)
        if facts is not None:
            self._facts.move_to_end(sql)
        return facts

    def _remember_facts(self, sql: str, facts: StatementFacts) -> StatementFacts:
        if facts.denial is not None and facts.denial.category in TRANSIENT_DENIALS:
            return facts
        self._facts[sql] = facts
        if len(self._facts) > self.config.analysis_cache_size:
            self._facts.popitem(last=False)
        return facts

    def _refuse_analysis(self, identity: Identity, wait: float) -> None:
        """Raises when the identity must wait `wait` seconds for its next new text."""
        if wait > 0:
            raise rate_limited(
                f'identity "{identity.name}" is sending new statement texts faster than they are analysed for it '
                f"({self.config.analysis_rate:g}/s); reuse texts with parameters, or retry shortly",
                wait,
            )
