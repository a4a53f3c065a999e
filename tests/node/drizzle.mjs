// drizzle-orm's neon-http driver against the gateway: inserts with returning, a select with
// a join, an update, and db.batch (one transaction on /sql) committing or rolling back whole.
// tests/test_neon_compat.py runs it on tables made with SQL, tests/test_migrations.py on
// tables drizzle-kit's migration made through the gateway.
import { randomUUID } from "node:crypto";
import { asc, count, eq, inArray } from "drizzle-orm";
import { drizzle } from "drizzle-orm/neon-http";
import { failure, gatewaySql, print } from "./gateway-env.mjs";
import { authors, books } from "./schema.mjs";

const db = drizzle({ client: gatewaySql() });
const run = randomUUID();
const [ada, grace] = await db.insert(authors).values([{ name: `Ada ${run}` }, { name: `Grace ${run}` }]).returning();
const inserted = await db.insert(books).values([
  { authorId: ada.id, title: `Notes ${run}`, published: "1843-09-01", tags: ["math", "engines"], meta: { pages: 65 } },
  { authorId: grace.id, title: `Compiler ${run}`, published: null, tags: [], meta: { lang: "A-0", bugs: [null] } },
]).returning({ id: books.id, title: books.title });
const mine = inArray(books.id, inserted.map(({ id }) => id));

const joined = () => db.select({ title: books.title, author: authors.name, published: books.published, tags: books.tags,
  meta: books.meta }).from(books).innerJoin(authors, eq(books.authorId, authors.id)).where(mine).orderBy(asc(books.title));
const beforeBatch = await joined();

const [hedy, renamed, bookCount] = await db.batch([
  db.insert(authors).values({ name: `Hedy ${run}` }).returning({ name: authors.name }),
  db.update(books).set({ title: `Notes, 2nd ed. ${run}` }).where(eq(books.title, `Notes ${run}`))
    .returning({ title: books.title }),
  db.select({ n: count() }).from(books).where(mine),
]);
const failedBatch = await failure(db.batch([
  db.insert(authors).values({ name: `Alan ${run}` }),
  db.insert(authors).values({ name: `Ada ${run}` }),
]));
const alan = await db.select().from(authors).where(eq(authors.name, `Alan ${run}`));

print({ run, beforeBatch, afterBatch: await joined(), hedy, renamed, bookCount, failedBatch, alanRows: alan.length });
