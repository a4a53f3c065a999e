// What the compatibility scripts share: the Neon driver pointed at the gateway's /sql, a
// node-postgres connection straight to the same database (the oracle), and the JSON they print.
import { readFileSync } from "node:fs";
import tls from "node:tls";
import { neon, neonConfig } from "@neondatabase/serverless";
import pg from "pg";

// An application's connection string: the gateway takes nothing from it (the token is the
// credential, and the database is the configured one).
export const CONNECTION_STRING = "postgresql://app:unused@gateway.local:5432/appdb?sslmode=require";

export function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

export function gatewaySql(options = {}) {
  neonConfig.fetchEndpoint = required("GATEWAY_SQL_URL");
  return neon(CONNECTION_STRING, { authToken: required("GATEWAY_TOKEN"), ...options });
}

export async function directClient() {
  // The test server's certificate names "localhost"; the connection goes to 127.0.0.1.
  const ssl = {
    ca: readFileSync(required("PG_CA")),
    checkServerIdentity: (_host, cert) => tls.checkServerIdentity("localhost", cert),
  };
  const client = new pg.Client({ connectionString: required("PG_URL"), ssl });
  await client.connect();
  return client;
}

// What a failed promise raised, in the fields an application looks at; null if it succeeded.
export async function failure(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    const { code = null, severity = null, position = null, constraint = null, where = null } = error;
    return { name: error.constructor.name, message: error.message, code, severity, position, constraint, where };
  }
}

export function print(result) {
  process.stdout.write(JSON.stringify(result));
}
