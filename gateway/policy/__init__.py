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

    def decide(self, identity: Identity, sql: str) -> tuple[StatementFacts, Decision]:
        facts = self.facts(sql)
        return facts, decide(identity, facts)
