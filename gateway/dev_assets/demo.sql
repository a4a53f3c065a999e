-- The demo schema of `gateway dev`: customers and orders, row-level security on orders
-- keyed on the verified "tenant" claim, and two least-privilege roles. Runs as the
-- superuser in database "app"; `gateway dev` then creates the login role.

CREATE ROLE demo_reader NOLOGIN;
CREATE ROLE demo_writer NOLOGIN;

CREATE TABLE public.customers (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant  text NOT NULL,
    name    text NOT NULL,
    country text NOT NULL
);

CREATE TABLE public.orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant      text NOT NULL DEFAULT (current_setting('request.jwt.claims', true)::jsonb ->> 'tenant'),
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    status      text NOT NULL DEFAULT 'new',
    total       numeric(12, 2) NOT NULL,
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO public.customers (tenant, name, country) VALUES
    ('acme', 'Ada Lovelace', 'GB'),
    ('acme', 'Grace Hopper', 'US'),
    ('globex', 'Hedy Lamarr', 'AT');

INSERT INTO public.orders (tenant, customer_id, status, total, note) VALUES
    ('acme', 1, 'shipped', 12.50, 'first order'),
    ('acme', 2, 'new', 3.00, NULL),
    ('globex', 3, 'new', 99.95, 'globex only');

ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.orders
    USING (tenant = current_setting('request.jwt.claims', true)::jsonb ->> 'tenant')
    WITH CHECK (tenant = current_setting('request.jwt.claims', true)::jsonb ->> 'tenant');

GRANT USAGE ON SCHEMA public TO demo_reader, demo_writer;
GRANT SELECT ON public.customers, public.orders TO demo_reader, demo_writer;
GRANT INSERT, UPDATE ON public.orders TO demo_writer;
