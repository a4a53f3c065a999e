// The next version of schema.mjs, whose migration (drizzle-kit diffs it against the first)
// tests/test_migrations.py applies second: on neon_reviews a column added, a unique index
// dropped and another index made, and its foreign key's ON DELETE changed (dropped and added
// again).
import { boolean, index, integer, pgTable, timestamp, uuid } from "drizzle-orm/pg-core";
import { authors, books, mood } from "./schema.mjs";

export { authors, books, mood };

export const reviews = pgTable("neon_reviews", {
  id: integer("id").primaryKey().generatedAlwaysAsIdentity(),
  bookId: integer("book_id").notNull().references(() => books.id, { onDelete: "restrict" }),
  mood: mood("mood").notNull().default("ok"),
  token: uuid("token").defaultRandom().notNull(),
  created: timestamp("created", { withTimezone: true }).defaultNow().notNull(),
  helpful: boolean("helpful").default(false).notNull(),
}, (table) => [
  index("neon_reviews_book_idx").on(table.bookId),
  index("neon_reviews_created_idx").on(table.created.desc()),
]);
