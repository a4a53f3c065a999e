"""Lexical guards, run before any parser: PostgreSQL's own scanner reads the text.

Owns the size cap, the characters and tokens refused outright (NUL, non-ASCII whitespace,
`U&` identifiers and strings), the parameter numbers used, and the text handed to sqlglot,
which differs from the caller's only in a space after each `$n` parameter: sqlglot 27.21+
reads `$1,$2` as the start of a dollar-quoted string. The parameter positions come from
PostgreSQL's scanner, so nothing inside a string, identifier or comment is touched.
The caller's text is what runs; this copy is only ever analysed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pglast import parser as pg_parser

from gateway.policy.facts import Denial

# Unicode whitespace other than ASCII's: PostgreSQL treats these as identifier characters,
# other tools as spaces, which is how one text can mean two things.
NON_ASCII_SPACE = re.compile(r"[\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029\u202f\u205f\u2060\u3000\ufeff]")
UNICODE_ESCAPE_TOKENS = frozenset({"UIDENT", "USCONST"})


@dataclass(frozen=True)
class ScannedText:
    analysis_text: str  # what sqlglot parses (the caller's text, params spaced)
    params_used: frozenset[int]


def scan(sql: str, max_bytes: int) -> ScannedText:
    """Apply the guards; raise `Denial` for text that must not reach a parser."""
    encoded = sql.encode("utf-8")
    if len(encoded) > max_bytes:
        raise Denial("too_large", f"the statement is {len(encoded)} bytes; the limit is {max_bytes}")
    if "\x00" in sql:
        raise Denial("lexical", "the statement contains a NUL byte")
    if NON_ASCII_SPACE.search(sql):
        raise Denial("lexical", "the statement contains non-ASCII whitespace")
    if not sql.strip():
        raise Denial("parse", "the statement is empty")
    try:
        tokens = pg_parser.scan(sql)
    except pg_parser.ParseError as error:
        raise Denial.syntax_error(error, sql) from None

    params: set[int] = set()
    cut_points: list[int] = []
    for token in tokens:
        if token.name in UNICODE_ESCAPE_TOKENS:
            raise Denial("lexical", "U&\"...\" and U&'...' escapes are not accepted")
        if token.name == "PARAM":
            # pglast gives character offsets into the text (libpg_query's byte offsets, converted).
            number = int(sql[token.start + 1 : token.end + 1])
            if number < 1:
                raise Denial("lexical", f"parameter ${number}: parameters are numbered from $1")
            params.add(number)
            cut_points.append(token.end + 1)
    if not cut_points:
        return ScannedText(sql, frozenset())
    pieces, previous = [], 0
    for cut in cut_points:
        pieces.append(sql[previous:cut])
        previous = cut
    pieces.append(sql[previous:])
    return ScannedText(" ".join(pieces), frozenset(params))
