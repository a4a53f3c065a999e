"""Lexical guards, run before any parser, and parameters, read as PostgreSQL's own scanner
reads the text.

Owns the size cap, the characters and tokens refused outright (NUL, non-ASCII whitespace,
`U&` identifiers and strings), the parameter numbers used, and the text handed to sqlglot,
which differs from the caller's only in a space after each `$n` parameter (sqlglot 27.21+
reads `$1,$2` as the start of a dollar-quoted string) and in blanks over the options of an
identity column's sequence (`GENERATED ... AS IDENTITY (SEQUENCE NAME s CACHE 1)`, which
sqlglot cannot read; PostgreSQL's reading judges them). The positions are PostgreSQL's, so
nothing inside a string, identifier or comment is touched. The caller's text is what runs;
this copy is only ever analysed.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from pglast import parser as pg_parser

from gateway.policy.facts import Denial

# Unicode whitespace other than ASCII's: PostgreSQL treats these as identifier characters,
# other tools as spaces, which is how one text can mean two things.
NON_ASCII_SPACE = re.compile(r"[\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029\u202f\u205f\u2060\u3000\ufeff]")
UNICODE_ESCAPE_TOKENS = frozenset({"UIDENT", "USCONST"})
# What starts those tokens in PostgreSQL's scanner (`xuistart`, `xusstart`): a text without it
# has none of them.
UNICODE_ESCAPE_START = re.compile(r"[uU]&['\"]")
# PostgreSQL's `param`: `$` and a decimal integer, digits optionally grouped by underscores.
PARAM_TEXT = re.compile(r"\$[0-9]+(?:_[0-9]+)*")
# A text without the word has no identity column options.
IDENTITY_WORD = re.compile(r"identity", re.IGNORECASE)


@dataclass(frozen=True)
class ScannedText:
    analysis_text: str  # what sqlglot parses (the caller's text, params spaced)
    params_used: frozenset[int]


def check_text(sql: str, max_bytes: int) -> None:
    """Apply the guards; raise `Denial` for text that must not reach a parser. PostgreSQL's
    scanner is asked only about a text that may hold a `U&` escape."""
    encoded = sql.encode("utf-8")
    if len(encoded) > max_bytes:
        raise Denial("too_large", f"the statement is {len(encoded)} bytes; the limit is {max_bytes}")
    if "\x00" in sql:
        raise Denial("lexical", "the statement contains a NUL byte")
    # `isascii` reads a flag the string already carries; the patterns below need a
    # character the text may not have, so each runs only where it could match.
    if not sql.isascii() and NON_ASCII_SPACE.search(sql):
        raise Denial("lexical", "the statement contains non-ASCII whitespace")
    if not sql.strip():
        raise Denial("parse", "the statement is empty")
    if "&" in sql and UNICODE_ESCAPE_START.search(sql):
        _scanned(sql)


def scan(sql: str, param_locations: Collection[int]) -> ScannedText:
    """The parameters and the text for sqlglot, for a text `check_text` passed and
    PostgreSQL's parser read; raise `Denial` for a parameter numbered below 1.

    `param_locations` are where the parser found parameters (its ParamRefs' byte offsets).
    PostgreSQL's scanner is asked only when the `$n` in the text do not start exactly where
    the parameters do. Every parameter token starts with a `$n`, so when their starts are
    the same set, each `$n` is a parameter (one in a string, an identifier or a comment is
    not at a ParamRef), and the longest `param` there is the token the scanner makes. Past a
    character beyond ASCII, byte offsets run ahead of character offsets, so the sets differ
    then too."""
    params = list(PARAM_TEXT.finditer(sql))
    if {param.start() for param in params} == set(param_locations) and not _names_identity(sql):
        return _spaced(sql, [(param.start(), param.end()) for param in params])
    return _scanned(sql)


def _names_identity(sql: str) -> bool:
    """Whether the word is there, ignoring case. In ASCII text, lowering and searching for a
    plain string is that test, without a case-insensitive pattern scan."""
    return "identity" in sql.lower() if sql.isascii() else IDENTITY_WORD.search(sql) is not None


def _scanned(sql: str) -> ScannedText:
    try:
        tokens = pg_parser.scan(sql)
    except pg_parser.ParseError as error:
        raise Denial.syntax_error(error, sql) from None
    params: list[tuple[int, int]] = []
    for token in tokens:
        if token.name in UNICODE_ESCAPE_TOKENS:
            raise Denial("lexical", "U&\"...\" and U&'...' escapes are not accepted")
        if token.name == "PARAM":
            # pglast gives character offsets into the text (libpg_query's byte offsets,
            # converted), the last one inclusive.
            params.append((token.start, token.end + 1))
    meaningful = [token for token in tokens if token.name not in COMMENT_TOKENS]
    return _spaced(_without_identity_options(sql, meaningful), params)


# The scanner reports comments as tokens; the grammar never sees them.
COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
# What comes before the options of an identity column, as token names, nearest first:
# `GENERATED ALWAYS AS IDENTITY (` and `GENERATED BY DEFAULT AS IDENTITY (`. Only there:
# `FROM t AS identity (a, b)` gives the alias `identity` its column names.
IDENTITY_PREFIXES = (("AS", "ALWAYS", "GENERATED"), ("AS", "DEFAULT", "BY", "GENERATED"))


def _without_identity_options(sql: str, tokens: list) -> str:
    """The text with each identity column's option list blanked, parentheses included; the
    same length, so every position stays PostgreSQL's."""
    for index, token in enumerate(tokens[:-1]):
        if token.name != "IDENTITY_P" or tokens[index + 1].name != "ASCII_40":
            continue
        before = tuple(earlier.name for earlier in reversed(tokens[max(index - 4, 0) : index]))
        if not any(before[: len(prefix)] == prefix for prefix in IDENTITY_PREFIXES):
            continue
        depth = 0
        for closing in tokens[index + 1 :]:
            depth += {"ASCII_40": 1, "ASCII_41": -1}.get(closing.name, 0)
            if depth == 0:
                start, end = tokens[index + 1].start, closing.end + 1
                sql = sql[:start] + " " * (end - start) + sql[end:]
                break
    return sql


def _spaced(sql: str, params: list[tuple[int, int]]) -> ScannedText:
    """`params`: (start, end) of each parameter token, in order."""
    numbers: set[int] = set()
    for start, end in params:
        number = int(sql[start + 1 : end])
        if number < 1:
            raise Denial("lexical", f"parameter ${number}: parameters are numbered from $1")
        numbers.add(number)
    if not params:
        return ScannedText(sql, frozenset())
    pieces, previous = [], 0
    for _, cut in params:
        pieces.append(sql[previous:cut])
        previous = cut
    pieces.append(sql[previous:])
    return ScannedText(" ".join(pieces), frozenset(numbers))
