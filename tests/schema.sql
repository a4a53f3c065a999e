-- Objects the test suite adds to the demo schema (gateway/dev_assets/demo.sql).
-- Runs as the superuser in the test database.

CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');

CREATE TABLE public.ledger (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    note text NOT NULL UNIQUE
);

CREATE TABLE public.moods (
    id   int PRIMARY KEY,
    mood public.mood NOT NULL
);
INSERT INTO public.moods VALUES (1, 'happy'), (2, 'sad');

CREATE TABLE public.secrets (
    id    int PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO public.secrets VALUES (1, 'not for callers');

GRANT SELECT, INSERT ON public.ledger TO demo_writer;
GRANT SELECT ON public.moods TO demo_reader, demo_writer;
GRANT SELECT ON public.ledger TO demo_reader;

-- A login that could act with its own privileges: the gateway must refuse it.
CREATE ROLE inheriting_login LOGIN INHERIT PASSWORD 'inheriting-login-password';
GRANT demo_reader, demo_writer TO inheriting_login;
