# A throwaway Postgres cluster for tests and the local farm.
# Requires lib/common.sh. Defines ensure_postgres, pg_start, pg_stop.

# Install Postgres from Debian's packages when no server binaries exist.
ensure_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql
  fi
  PG_BIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
  export PG_BIN
}

# Run a Postgres tool; as the postgres user when we are root (initdb refuses root).
pg_run() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# pg_start DIR [PORT]: start (or reuse) a cluster in DIR on 127.0.0.1:PORT,
# trust auth, and export PG_DIR, PG_PORT and PG_ADMIN_URL.
pg_start() {
  local dir=$1 port=${2:-}
  ensure_postgres
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; chmod 700 "$dir"; fi
  if [ ! -f "$dir/PG_VERSION" ]; then
    pg_run "$PG_BIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  fi
  if [ -f "$dir/port" ]; then
    port=$(cat "$dir/port")
  fi
  port=${port:-$(free_port)}
  if ! pg_run "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    pg_run "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=500 -c fsync=off \
          -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB" >/dev/null \
      || { cat "$dir/server.log" >&2; die "postgres did not start"; }
  fi
  echo "$port" | pg_run tee "$dir/port" >/dev/null
  PG_DIR=$dir
  PG_PORT=$port
  PG_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export PG_DIR PG_PORT PG_ADMIN_URL
}

# pg_stop DIR: stop the cluster in DIR if it runs.
pg_stop() {
  local dir=$1
  [ -f "$dir/PG_VERSION" ] || return 0
  pg_run "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}
