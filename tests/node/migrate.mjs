// drizzle-orm's own migrator for neon-http, through the gateway's /sql: it creates its
// journal (schema "drizzle"), runs each statement of each migration in MIGRATIONS_DIR that the
// journal lacks as one request, and records it. Prints the journal afterwards.
import { drizzle } from "drizzle-orm/neon-http";
import { migrate } from "drizzle-orm/neon-http/migrator";
import { sql } from "drizzle-orm";
import { gatewaySql, print, required } from "./gateway-env.mjs";

const db = drizzle({ client: gatewaySql() });
await migrate(db, { migrationsFolder: required("MIGRATIONS_DIR") });
const journal = await db.execute(sql`select hash from drizzle.__drizzle_migrations order by id`);
print({ journal: journal.rows.map(({ hash }) => hash) });
