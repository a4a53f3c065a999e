"""Prepared statements follow the schema (issue 10, item 6): a statement cached on a pooled
connection before `ALTER TABLE ... ADD COLUMN` is prepared again, and identities whose search
paths resolve the same text to different tables never share one. A real `gateway serve` with
one connection, so every request reuses the statements of the ones before."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import Superuser

SCHEMA_SQL = """
CREATE SCHEMA alpha;
CREATE SCHEMA beta;
CREATE TABLE alpha.t (id int, label text);
CREATE TABLE beta.t (id text, label text);
INSERT INTO alpha.t VALUES (1, 'alpha one');
INSERT INTO beta.t VALUES ('b', 'beta b');
CREATE TABLE public.shapeshifter (id int);
INSERT INTO public.shapeshifter VALUES (1);
GRANT USAGE ON SCHEMA alpha, beta TO demo_reader;
GRANT SELECT ON alpha.t, beta.t, public.shapeshifter TO demo_reader;
"""
DROP_SQL = "DROP SCHEMA alpha, beta CASCADE; DROP TABLE public.shapeshifter"

IDENTITIES = """
[[identities]]
name = "alpha"
issuer = "dev"
match = { sub = "alpha" }
role = "demo_reader"
schemas = ["alpha"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["alpha.*"]

[[identities]]
name = "beta"
issuer = "dev"
match = { sub = "beta" }
role = "demo_reader"
schemas = ["beta"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["beta.*"]

[[identities]]
name = "shifter"
issuer = "dev"
match = { sub = "shifter" }
role = "demo_reader"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.shapeshifter"]
"""


@pytest.fixture(scope="module")
def schema(database) -> Iterator[None]:
    database.execute(SCHEMA_SQL)
    yield
    database.execute(DROP_SQL)


@pytest.fixture(scope="module")
def one_connection(schema, launch_gateway, gateway_config):
    return launch_gateway(config_text=gateway_config(IDENTITIES, pool_max=1))


def column_names(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [column["name"] for column in response.json()["columns"]]


def test_select_star_follows_a_column_added_since_it_was_prepared(one_connection, call_as, superuser: Superuser):
    shifter = call_as(one_connection, "shifter")
    before = column_names(shifter.query("select * from shapeshifter"))
    superuser.execute("ALTER TABLE public.shapeshifter ADD COLUMN first_extra int DEFAULT 7")
    response = shifter.query("select * from shapeshifter")
    assert column_names(response) == [*before, "first_extra"]
    assert response.json()["rows"][0]["first_extra"] == 7


def test_a_later_statement_of_a_batch_that_met_a_changed_table_is_rolled_back_and_can_be_retried(
    one_connection, call_as, superuser: Superuser
):
    shifter = call_as(one_connection, "shifter")
    batch = {"statements": [{"sql": "select 1 as one"}, {"sql": "select * from shapeshifter"}]}
    assert shifter.post("/v1/batch", batch).status_code == 200
    superuser.execute("ALTER TABLE public.shapeshifter ADD COLUMN second_extra int DEFAULT 8")
    stale = shifter.post("/v1/batch", batch)
    assert stale.status_code == 409, stale.text
    error = stale.json()["error"]
    assert (error["code"], error["sqlstate"]) == ("serialization_failure", "0A000")
    assert "statement 2" in error["message"] and "retried" in error["message"]
    retried = shifter.post("/v1/batch", batch)
    assert retried.status_code == 200, retried.text
    assert retried.json()["results"][1]["rows"][0]["second_extra"] == 8


def test_identities_whose_search_paths_resolve_a_name_differently_share_no_statement(one_connection, call_as):
    alpha, beta = call_as(one_connection, "alpha"), call_as(one_connection, "beta")
    sql = "select label from t where id = $1"  # $1 is an int4 in alpha.t, text in beta.t
    for _ in range(2):
        assert alpha.query(sql, "1").json()["rows"] == [{"label": "alpha one"}]
        response = beta.query(sql, "b")
        assert response.status_code == 200, response.text
        assert response.json()["rows"] == [{"label": "beta b"}]
    assert column_names(alpha.query("select * from t")) == column_names(beta.query("select * from t"))
    assert alpha.query("select * from t").json()["columns"][0]["type"] == "int4"
    assert beta.query("select * from t").json()["columns"][0]["type"] == "text"
