// Orders through the gateway, two ways: plain fetch() to /v1/query, and the Neon serverless
// driver pointed at /sql. Either way the Worker holds no database password: the token is the
// credential, and the gateway decides what it may run.
import { neon, neonConfig } from "@neondatabase/serverless";

const ORDER_SQL = "select id, status, total from orders where id = $1";

export default {
  async fetch(request, env) {
    const match = new URL(request.url).pathname.match(/^\/orders\/(\d+)(\/neon)?$/);
    if (!match) return Response.json({ error: "try /orders/1 or /orders/1/neon" }, { status: 404 });
    const [, id, viaNeon] = match;
    return viaNeon ? orderViaNeon(env, id) : orderViaFetch(env, id);
  },
};

async function orderViaFetch(env, id) {
  const response = await fetch(`${env.GATEWAY_URL}/v1/query`, {
    method: "POST",
    headers: { Authorization: `Bearer ${env.GATEWAY_TOKEN}` },
    body: JSON.stringify({ sql: ORDER_SQL, params: [id] }),
  });
  const body = await response.json();
  return Response.json(response.ok ? { via: "fetch", rows: body.rows } : body, { status: response.status });
}

async function orderViaNeon(env, id) {
  neonConfig.fetchEndpoint = `${env.GATEWAY_URL}/sql`;
  // The driver wants a connection string; the gateway ignores its user, password and
  // database (the token is the credential, the database the configured one).
  const sql = neon("postgresql://worker:unused@gateway/app", { authToken: env.GATEWAY_TOKEN });
  try {
    return Response.json({ via: "neon", rows: await sql.query(ORDER_SQL, [id]) });
  } catch (error) {
    // A NeonDbError carries PostgreSQL's code (42501 when the gateway's policy says no).
    return Response.json({ error: error.message, code: error.code }, { status: 502 });
  }
}
