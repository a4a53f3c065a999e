// The drizzle schema of the compatibility tests' tables: drizzle.mjs queries it, and
// `drizzle-kit generate` makes the migration tests/test_migrations.py applies through /sql.
// The same tables as tests/test_neon_compat.py creates (constraint names included), plus one
// with what migration tools emit besides: an identity column, an enum, defaults calling
// functions, an index and a unique index.
import { sql } from "drizzle-orm";
import {
  date, index, integer, jsonb, pgEnum, pgTable, serial, text, timestamp, uniqueIndex, uuid,
} from "drizzle-orm/pg-core";

export const authors = pgTable("neon_authors", {
  id: serial("id").primaryKey(),
  name: text("name").notNull().unique("neon_authors_name_key"),
});

export const books = pgTable("neon_books", {
  id: serial("id").primaryKey(),
  authorId: integer("author_id").notNull().references(() => authors.id),
  title: text("title").notNull(),
  published: date("published"),
  tags: text("tags").array().notNull().default(sql`'{}'`),
  meta: jsonb("meta"),
});

export const mood = pgEnum("neon_mood", ["sad", "ok", "happy"]);

export const reviews = pgTable("neon_reviews", {
  id: integer("id").primaryKey().generatedAlwaysAsIdentity(),
  bookId: integer("book_id").notNull().references(() => books.id, { onDelete: "cascade" }),
  mood: mood("mood").notNull().default("ok"),
  token: uuid("token").defaultRandom().notNull(),
  created: timestamp("created", { withTimezone: true }).defaultNow().notNull(),
}, (table) => [
  index("neon_reviews_book_idx").on(table.bookId),
  uniqueIndex("neon_reviews_token_idx").on(table.token),
]);
