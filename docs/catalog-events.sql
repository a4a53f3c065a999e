-- Tells every edge-sql-gateway serving this database that the catalog changed, whoever
-- changed it: each gateway LISTENs on the channel and reads its catalog snapshot again
-- within a second. Run once per database, as a superuser (only superusers create event
-- triggers). Without it, changes made outside the gateway reach it at the next periodic
-- refresh ([policy] catalog_refresh) or on SIGHUP.
CREATE OR REPLACE FUNCTION public.edge_sql_gateway_catalog_changed() RETURNS event_trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('edge_sql_gateway_catalog', tg_tag);
END
$$;
DROP EVENT TRIGGER IF EXISTS edge_sql_gateway_ddl_end;
CREATE EVENT TRIGGER edge_sql_gateway_ddl_end ON ddl_command_end
    EXECUTE FUNCTION public.edge_sql_gateway_catalog_changed();
DROP EVENT TRIGGER IF EXISTS edge_sql_gateway_sql_drop;
CREATE EVENT TRIGGER edge_sql_gateway_sql_drop ON sql_drop
    EXECUTE FUNCTION public.edge_sql_gateway_catalog_changed();
