#!/bin/sh
# Run once by the postgres image on an empty data directory: the identity role, the
# gateway's login (NOINHERIT, a member of the identity role, its password from the
# DB_PASSWORD secret) and the table deploy/gateway.toml allows.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v password="$(cat /run/secrets/DB_PASSWORD)" <<'SQL'
CREATE ROLE orders_writer NOLOGIN;
CREATE ROLE gateway_login LOGIN NOINHERIT PASSWORD :'password';
GRANT orders_writer TO gateway_login;
CREATE TABLE public.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer text NOT NULL,
    total numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON public.orders TO orders_writer;
SQL
