#!/usr/bin/env bash
# Prepare this machine and checkout for the test suite. Idempotent: run it as often as
# you like; it only prints something when it changes something.
#
# What it does (each step is skipped when already done):
#   1. npm ci when node_modules is missing or older than package-lock.json (its
#      postinstall rebuilds ssh2's crypto binding for Node 24 when needed).
#   2. Checks that the native addons (ssh2's crypto binding, better-sqlite3) load in
#      Node 24 (node_modules/.bin/node); fails loudly if not.
#   3. As root: installs openssh-server, sudo and util-linux when sshd, sudo, setsid or
#      flock are missing (the system sshd service is neither enabled nor started by us:
#      the tests start their own sshd processes on loopback), and Debian's chromium
#      when /usr/bin/chromium is missing (the browser CORS test drives it with
#      puppeteer-core; nothing downloads a browser).
#   4. As root: creates the local test accounts used by the SSH tests:
#        frtest   a normal login user (/home/frtest, /bin/bash) with a password
#        frrunas  the run-as target user (/bin/sh)
#      and /etc/sudoers.d/fleetrun-test allowing `frtest ALL=(frrunas) NOPASSWD: ALL`
#      (nothing lets frtest become root).
#      frtest's password is random, generated once per machine and kept root-only in
#      /var/lib/fleetrun-test/frtest-password, so every checkout on the machine agrees;
#      each checkout gets a copy in .cache/frtest-password (mode 0600) for the tests.
#   5. PostgreSQL for the tests at 127.0.0.1:5432 (trust auth, database `test`),
#      started or installed when needed; skipped when DATABASE_URL_TEST is set.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
NODE24="$ROOT/node_modules/.bin/node"

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

APT_UPDATED=0
apt_install() {
  is_root || die "need root to install: $* (install them yourself or run as root)"
  export DEBIAN_FRONTEND=noninteractive
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  say "apt-get install -y $*"
  apt-get install -y -qq "$@" >/dev/null
}

# --- 1. node_modules --------------------------------------------------------------
# Plain `npm ci`, no fallback: the lock file must be complete, or this fails loudly.
# The package's postinstall (scripts/native-addons.js) rebuilds ssh2's native crypto
# binding for Node 24 when the machine's npmrc made node-gyp build it for another Node.
marker=node_modules/.package-lock.json
if [ ! -d node_modules ] || [ ! -e "$marker" ] || [ package-lock.json -nt "$marker" ]; then
  say "npm ci: dependencies and Node 24 (first run: minutes, up to 15 on a busy machine; log in .cache/npm-ci.log)"
  mkdir -p .cache
  started=$SECONDS
  # npm's own warnings (EBADENGINE: npm itself runs on the system Node) go to the log;
  # the postinstall's own lines (prefixed `fleetrun:`) are shown as they come.
  set +o pipefail
  npm ci --no-audit --no-fund --loglevel=warn 2>&1 | tee .cache/npm-ci.log \
    | { grep --line-buffered '^fleetrun:' | sed -u 's/^fleetrun: /bootstrap: /' >&2 || true; }
  rc=${PIPESTATUS[0]}
  set -o pipefail
  if [ "$rc" -ne 0 ]; then
    cat .cache/npm-ci.log >&2
    die "npm ci failed (output above)"
  fi
  say "npm ci: done in $((SECONDS - started)) s"
fi
[ -x "$NODE24" ] || die "$NODE24 is missing after npm ci (the 'node' package's preinstall fetches it)"

# --- 2. native addons load in Node 24 ---------------------------------------------
# ssh2's crypto binding (built or rebuilt by npm ci's postinstall) and better-sqlite3.
mkdir -p .cache
if ! "$NODE24" -e '
    require("./node_modules/ssh2/lib/protocol/crypto/build/Release/sshcrypto.node");
    const Database = require("better-sqlite3");
    new Database(":memory:").close();
  ' >.cache/native-check.log 2>&1; then
  cat .cache/native-check.log >&2
  die "native addons do not load in Node 24 after npm ci (above); rm -rf node_modules and run again"
fi

# `--app-only`: just what running the service needs (steps 1 and 2).
if [ "${1:-}" = "--app-only" ]; then
  exit 0
fi

# Everything below changes the machine, which needs root.
if ! is_root; then
  if [ -x /usr/sbin/sshd ] && id frtest >/dev/null 2>&1 && [ -s .cache/frtest-password ]; then
    exit 0
  fi
  die "the SSH tests need root: run 'bash scripts/bootstrap.sh' as root once"
fi

# --- 3. system packages -----------------------------------------------------------
pkgs=()
[ -x /usr/sbin/sshd ] || pkgs+=(openssh-server)
command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || pkgs+=(openssh-client)
command -v sudo >/dev/null 2>&1 || pkgs+=(sudo)
{ command -v setsid >/dev/null 2>&1 && command -v flock >/dev/null 2>&1; } || pkgs+=(util-linux)
[ -x /usr/bin/chromium ] || pkgs+=(chromium)
if [ "${#pkgs[@]}" -gt 0 ]; then
  # Keep the packages' maintainer scripts from starting the system sshd.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt_install "${pkgs[@]}"
fi
mkdir -p /run/sshd

# --- 4. test users and sudoers ----------------------------------------------------
if ! id frtest >/dev/null 2>&1; then
  say "creating user frtest"
  useradd --create-home --home-dir /home/frtest --shell /bin/bash frtest
fi
if ! id frrunas >/dev/null 2>&1; then
  say "creating user frrunas"
  useradd --create-home --home-dir /home/frrunas --shell /bin/sh frrunas
fi

secret_dir=/var/lib/fleetrun-test
secret=$secret_dir/frtest-password
if [ ! -s "$secret" ]; then
  say "generating frtest's password ($secret)"
  install -d -m 0700 "$secret_dir"
  (umask 077 && head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$secret")
fi
password=$(cat "$secret")
hash=$(getent shadow frtest | cut -d: -f2)
if ! PW="$password" HASH="$hash" perl -e 'exit(crypt($ENV{PW}, $ENV{HASH}) eq $ENV{HASH} ? 0 : 1)'; then
  say "setting frtest's password"
  printf 'frtest:%s\n' "$password" | chpasswd
fi
mkdir -p .cache
if [ ! -s .cache/frtest-password ] || ! cmp -s "$secret" .cache/frtest-password; then
  install -m 0600 "$secret" .cache/frtest-password
fi

sudoers=/etc/sudoers.d/fleetrun-test
want='# Test accounts of the fleetrun test suite (scripts/bootstrap.sh).
frtest ALL=(frrunas) NOPASSWD: ALL'
if [ ! -f "$sudoers" ] || [ "$(cat "$sudoers")" != "$want" ] \
  || [ "$(stat -c %a "$sudoers")" != 440 ]; then
  say "writing $sudoers"
  tmp=$(mktemp /etc/sudoers.d/.fleetrun-test.XXXXXX)
  printf '%s\n' "$want" >"$tmp"
  chmod 0440 "$tmp"
  visudo -cqf "$tmp" || { rm -f "$tmp"; die "visudo rejected the sudoers drop-in"; }
  mv -f "$tmp" "$sudoers"
fi

# --- 5. PostgreSQL ----------------------------------------------------------------
if [ -z "${DATABASE_URL_TEST:-}" ]; then
  pg_up() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }
  wait_pg() {
    for _ in $(seq 1 60); do pg_up && return 0; sleep 0.5; done
    return 1
  }
  if ! pg_up; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql
    fi
    ver=$(ls /etc/postgresql | sort -V | tail -n1)
    say "starting PostgreSQL $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    wait_pg || die "PostgreSQL does not answer at 127.0.0.1:5432"
  fi
  psql_pg() { su postgres -c "psql -X -q -tA -h /var/run/postgresql -p 5432 $*"; }
  if ! psql -X -q -tA -h 127.0.0.1 -p 5432 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
    # Trust auth from 127.0.0.1 (test-only cluster) and a `test` database.
    ver=$(ls /etc/postgresql | sort -V | tail -n1)
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    if [ -f "$hba" ] && ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
      say "enabling trust auth for 127.0.0.1 in $hba"
      sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
      psql_pg "-c 'select pg_reload_conf()'" >/dev/null
    fi
    if [ "$(psql_pg "-c \"select 1 from pg_database where datname = 'test'\"")" != 1 ]; then
      say "creating database test"
      psql_pg "-c 'create database test'" >/dev/null
    fi
    psql -X -q -tA -h 127.0.0.1 -p 5432 -U postgres -d test -c 'select 1' >/dev/null \
      || die "cannot connect to postgres://postgres@127.0.0.1:5432/test"
  fi
fi
