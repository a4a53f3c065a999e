"""The statement allowlist: analysis of a text (cached, identity-independent) and the
decision against one identity's rules (cheap, on top).

`PolicyEngine` is the only entry point the pipeline and the CLI use.
"""

from __future__ import annotations

from functools import lru_cache, partial

from gateway.config import PolicyConfig
from gateway.identity import Identity
from gateway.policy.analysis import analyze
from gateway.policy.decision import Decision, decide
from gateway.policy.facts import Denial, StatementFacts, TableName

__all__ = ["Decision", "Denial", "PolicyEngine", "StatementFacts", "TableName"]


class PolicyEngine:
    def __init__(self, config: PolicyConfig) -> None:
        # Keyed by the exact text: the same bytes always mean the same statement.
        self.facts = lru_cache(maxsize=config.analysis_cache_size)(
            partial(analyze, max_bytes=config.max_statement_bytes)
        )
        # Decisions for the statements callers repeat, per identity (identities are immutable
        # and named uniquely). Bounded like the analysis cache; emptied whole when full.
        self._decisions: dict[tuple[str, str], tuple[StatementFacts, Decision]] = {}
        self._decision_limit = config.analysis_cache_size

    def decide(self, identity: Identity, sql: str) -> tuple[StatementFacts, Decision]:
        key = (identity.name, sql)
        known = self._decisions.get(key)
        if known is not None:
            return known
        facts = self.facts(sql)
        result = facts, decide(identity, facts)
        if len(self._decisions) >= self._decision_limit:
            self._decisions.clear()
        self._decisions[key] = result
        return result
