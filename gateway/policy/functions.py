"""Which functions a statement may call: the built-in safe list and the deny list.

Names are PostgreSQL's built-ins, judged as the parser reports the call (`lcase` and
`"Lower"` are not `lower`). The safe list holds pure or stable functions that read only
their arguments: aggregates, window functions, string, math, date/time, JSON, array, range
and text-search functions (not `ts_stat` or `ts_rewrite`, which run a query given as text).
The deny list holds functions that reach outside the statement (files, other sessions,
configuration, sleeping, locks, sequences, the login role); an identity's `functions` can
lift one only by naming it. Even then `set_config` never touches a setting the gateway owns.
"""

from __future__ import annotations

from gateway.policy.facts import Denial

SAFE_FUNCTIONS = frozenset(
    """
    count sum avg min max array_agg string_agg json_agg jsonb_agg json_object_agg jsonb_object_agg
    bool_and bool_or every bit_and bit_or bit_xor stddev stddev_pop stddev_samp variance var_pop
    var_samp percentile_cont percentile_disc mode corr covar_pop covar_samp regr_avgx regr_avgy
    regr_count regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy any_value
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
    lower upper length char_length character_length octet_length bit_length substr substring trim
    btrim ltrim rtrim lpad rpad concat concat_ws replace split_part strpos position left right
    reverse repeat initcap format md5 sha224 sha256 sha384 sha512 encode decode to_hex ascii chr
    regexp_replace regexp_match regexp_matches regexp_split_to_array regexp_split_to_table
    regexp_count regexp_instr regexp_like regexp_substr starts_with translate quote_ident
    quote_literal quote_nullable string_to_array string_to_table array_to_string overlay unistr
    normalize casefold similar_to_escape like_escape
    abs ceil ceiling floor round trunc sign sqrt cbrt power pow exp ln log log10 mod div pi degrees
    radians sin cos tan cot asin acos atan atan2 sinh cosh tanh width_bucket gcd lcm factorial
    scale min_scale trim_scale random gen_random_uuid uuidv4 uuidv7
    now date_trunc date_part extract age make_date make_time make_timestamp make_timestamptz
    make_interval to_char to_date to_timestamp to_number date_bin justify_days justify_hours
    justify_interval isfinite clock_timestamp statement_timestamp transaction_timestamp timezone
    timeofday date overlaps
    to_json to_jsonb json_build_object jsonb_build_object json_build_array jsonb_build_array
    json_object jsonb_object json_array_length jsonb_array_length json_each jsonb_each json_each_text
    jsonb_each_text json_array_elements jsonb_array_elements json_array_elements_text
    jsonb_array_elements_text json_object_keys jsonb_object_keys json_extract_path
    jsonb_extract_path json_extract_path_text jsonb_extract_path_text json_typeof jsonb_typeof
    jsonb_set jsonb_set_lax jsonb_insert jsonb_pretty jsonb_strip_nulls json_strip_nulls
    jsonb_path_query jsonb_path_exists jsonb_path_match jsonb_path_query_array
    jsonb_path_query_first array_to_json json_scalar json_serialize row_to_json
    json_populate_record jsonb_populate_record json_populate_recordset jsonb_populate_recordset
    json_to_record jsonb_to_record json_to_recordset jsonb_to_recordset
    array_length array_lower array_upper array_ndims array_dims cardinality array_append
    array_prepend array_cat array_position array_positions array_remove array_replace unnest
    generate_series generate_subscripts array_fill array_reverse array_sample array_shuffle
    array_sort trim_array num_nonnulls num_nulls pg_typeof
    int4range int8range numrange tsrange tstzrange daterange isempty lower_inc upper_inc lower_inf
    upper_inf range_merge
    to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd
    ts_headline setweight tsvector_to_array array_to_tsvector numnode
    abbrev broadcast family host hostmask inet_merge inet_same_family masklen netmask network
    set_masklen macaddr8_set7bit
    current_date current_time current_timestamp localtime localtimestamp current_user current_role
    user current_catalog current_schema
    """.split()
)

# Reach outside the statement; only an exact, qualified-as-written name in an identity's
# `functions` allows one of these.
DENIED_FUNCTIONS = frozenset(
    """
    set_config current_setting pg_sleep pg_sleep_for pg_sleep_until pg_read_file
    pg_read_binary_file pg_ls_dir pg_stat_file pg_terminate_backend pg_cancel_backend
    pg_reload_conf pg_rotate_logfile pg_notify nextval setval currval lastval query_to_xml
    query_to_xml_and_xmlschema table_to_xml cursor_to_xml dblink pg_file_write session_user system_user
    """.split()
)
DENIED_PREFIXES = (
    "pg_advisory",
    "pg_try_advisory",
    "lo_",
    "dblink",
    "pg_ls_",
    "pg_read_",
    "txid_",
    "pg_logical_",
    "pg_replication_",
    "pg_create_",
    "pg_drop_",
    "pg_stat_reset",
)


def unqualified(name: str) -> str:
    """`pg_catalog.lower` -> `lower`; other qualifications are kept."""
    return name.removeprefix("pg_catalog.")


def is_denied(name: str) -> bool:
    base = unqualified(name)
    return base in DENIED_FUNCTIONS or base.startswith(DENIED_PREFIXES)


# The safe list less whatever the deny list catches, worked out once: every function of
# every new statement is looked up here, several times. No name on it has a dot.
BUILTIN_SAFE = frozenset(name for name in SAFE_FUNCTIONS if not is_denied(name))


def is_builtin_safe(name: str) -> bool:
    return unqualified(name) in BUILTIN_SAFE


# Settings `set_config` may never change, even for an identity allowed to call it: the ones
# the gateway sets per transaction (a changed role or claims would read another tenant's
# rows under row-level security), the session's identity and transaction mode, and every
# `request.*` setting, which row-level-security policies read as the verified claims.
PROTECTED_SETTINGS = frozenset(
    """
    role session_authorization search_path request.jwt.claims statement_timeout lock_timeout
    idle_in_transaction_session_timeout standard_conforming_strings application_name
    transaction_isolation transaction_read_only transaction_deferrable default_transaction_isolation
    default_transaction_read_only default_transaction_deferrable session_replication_role row_security
    """.split()
)
PROTECTED_SETTING_PREFIXES = ("request.",)


def check_set_config_call(function: str, arguments: list[dict]) -> None:
    """A call named `set_config` names its setting with a constant string, and not one of
    the protected settings (compared as PostgreSQL compares setting names: ignoring case)."""
    if function != "set_config":
        return
    first = arguments[0] if arguments else {}
    constant = first.get("A_Const", {}).get("sval", {}).get("sval") if "A_Const" in first else None
    if constant is None:
        raise Denial("function", "set_config must name its setting with a constant string")
    name = constant.lower()
    if name in PROTECTED_SETTINGS or name.startswith(PROTECTED_SETTING_PREFIXES):
        raise Denial("function", f"set_config may not change {constant}: the gateway sets it for every request")
