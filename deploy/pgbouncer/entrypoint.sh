#!/bin/sh
# PgBouncer reads its users from a file of `"user" "password"` lines: write it from the
# DB_PASSWORD secret into the container's tmpfs, then run PgBouncer in the foreground.
set -eu
umask 077
# A double quote inside a value is written twice (PgBouncer's quoting).
password=$(sed 's/"/""/g' /run/secrets/DB_PASSWORD)
printf '"gateway_login" "%s"\n' "$password" > /run/pgbouncer/userlist.txt
exec pgbouncer /etc/pgbouncer/pgbouncer.ini
