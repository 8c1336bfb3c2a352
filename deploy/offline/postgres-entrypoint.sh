#!/bin/sh
# Creates the cluster, the role and the database on first start (from POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB, like the upstream postgres image), then runs the server on
# every interface with password authentication for connections from other containers.
set -eu

if [ "${1:-}" != "postgres" ]; then
  exec "$@"
fi
shift

user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres-entrypoint: POSTGRES_PASSWORD is empty; set it to create the database" >&2
    exit 1
  fi
  password_file=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
  initdb --username="$user" --pwfile="$password_file" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$password_file"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$database" != "postgres" ]; then
    pg_ctl --silent --wait --options="-c listen_addresses=''" start
    psql --quiet --username="$user" --dbname=postgres --set=ON_ERROR_STOP=1 \
      --command="CREATE DATABASE \"$database\" OWNER \"$user\""
    pg_ctl --silent --wait --mode=fast stop
  fi
  echo "postgres-entrypoint: created database $database for role $user"
fi

exec postgres -c listen_addresses='*' "$@"
