"""Database access: the pool (`pool`), the per-request transaction (`session`) and the
mapping of values between JSON and PostgreSQL (`types`)."""
