#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on 127.0.0.1 for the tests: starts them where
# they are installed but stopped, installs them with apt-get where they are missing.
# Prints the admin URL to use as TEST_PG_ADMIN_URL on its last line.
set -euo pipefail

log() { echo "services: $*" >&2; }

apt_install() {
  if ! command -v apt-get >/dev/null; then
    log "cannot install $* (no apt-get): install it and run again"; exit 1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.2; done
  log "nothing answers on port $1"; exit 1
}

# Redis: the tests also start private redis-server processes, so the binary must exist.
command -v redis-server >/dev/null || apt_install redis-server
if ! port_open 6379; then
  log "starting redis-server"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2
  wait_port 6379
fi

# PostgreSQL.
if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; fi
if ! port_open 5432; then
  log "starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start >&2
  wait_port 5432
fi

url="postgresql://postgres@127.0.0.1:5432/postgres"
if ! psql "$url" -qtAc 'SELECT 1' >/dev/null 2>&1; then
  # A fresh install asks for a password over TCP: give the admin role one for the tests.
  log "setting a password for the postgres role (test machine only)"
  su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >&2
  url="postgresql://postgres:postgres@127.0.0.1:5432/postgres"
  psql "$url" -qtAc 'SELECT 1' >/dev/null
fi
echo "$url"
