#!/usr/bin/env bash
# Install and run the tests (README: "run the tests"). Idempotent: fast when things are there.
#   - Debian packages: PostgreSQL (the production database; the suite runs against it too),
#     Chromium and CJK fonts (patient pages in a real headless browser).
#   - the project with its test extras, into the current Python.
#   - a throwaway PostgreSQL cluster on a loopback port, removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || need_apt+=(fonts-noto-cjk)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"

# The layers (pyproject.toml, [tool.importlinter]): a broken contract fails CI before any test runs.
lint-imports

# A PostgreSQL cluster of our own, owned by the postgres user (it refuses to run as root).
PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
PGDIR=$(mktemp -d /tmp/yrdhub-pg.XXXXXX)
PGPORT=${YRDHUB_TEST_PGPORT:-55432}
chown postgres:postgres "$PGDIR" 2>/dev/null || true
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
  -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
cleanup() { as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$PGDIR"; }
trap cleanup EXIT
as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres yrdhub_test
export YRDHUB_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/yrdhub_test"

python3 -m pytest -p no:cacheprovider "$@"
