#!/usr/bin/env bash
# Installs the system packages pgwarden needs to build and test, on Debian 12
# (and other Debian/Ubuntu releases) with Rust already installed.
#
#   scripts/deps.sh                    # check; install what is missing
#   scripts/deps.sh --with-pgbouncer   # also pgbouncer (benchmark comparison)
#
# Idempotent: every tool is checked first and only missing packages are
# installed. As root it runs apt-get; otherwise it prints the exact command to
# run and exits 1. Exits 0 when everything is present.
#
# What provides what (Debian 12, measured with `dpkg -S` / `apt-cache show`):
#   initdb, pg_ctl, postgres  postgresql-15 (pulled in by `postgresql`)
#   pgbench                   postgresql-15 too: /usr/lib/postgresql/15/bin/pgbench.
#                             (postgresql-contrib is only a metapackage for it
#                             there; /usr/bin/pgbench is postgresql-client-common's
#                             pg_wrapper, which fails when the real binary is absent;
#                             some other releases ship pgbench in the client package)
#   psql                      postgresql-client-15 (pulled in by `postgresql-client`)
#   libclang + clang headers  libclang-dev (bindgen, for pg_query's build)
#   pkg-config                pkg-config
#   chattr                    e2fsprogs (audit tests: an immutable directory stops even root)
#   ShellCheck                shellcheck (deployment scripts are checked by the tests)
#   npm (and node)            npm (the tests install dclint, a compose-file validator, with it)
#   openssl                   openssl (the tests run the compose demo's certificate script)
#   python3 -m venv           python3-venv (the client matrix installs drivers from PyPI into
#                             a venv under target/)
#   java, postgresql.jar      default-jre-headless, libpostgresql-jdbc-java (the client matrix runs
#                             a pgjdbc program with /usr/share/java/postgresql.jar)
#   node                      nodejs (node-postgres in the client matrix; npm brings it)
#   pgbouncer                 pgbouncer (/usr/sbin/pgbouncer)
set -euo pipefail

with_pgbouncer=0
for arg in "$@"; do
  case $arg in
    --with-pgbouncer) with_pgbouncer=1 ;;
    -h | --help)
      sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *)
      echo "deps.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

log() { echo "deps: $*" >&2; }

# The directory holding initdb, pg_ctl and postgres, looked up in the same order
# as the integration tests: $PG_BINDIR, `pg_config --bindir`,
# /usr/lib/postgresql/*/bin (newest first), $PATH. Prints it; fails if none.
pg_server_bindir() {
  local candidates=() d
  if [[ -n ${PG_BINDIR:-} ]]; then candidates+=("$PG_BINDIR"); fi
  if command -v pg_config >/dev/null 2>&1 && d=$(pg_config --bindir 2>/dev/null); then
    candidates+=("$d")
  fi
  while IFS= read -r d; do
    candidates+=("$d")
  done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV)
  if d=$(command -v initdb 2>/dev/null); then candidates+=("$(dirname "$d")"); fi
  for d in ${candidates[@]+"${candidates[@]}"}; do
    if [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}

# A tool "works" only if `tool --version` runs: Debian's /usr/bin/psql and
# /usr/bin/pgbench are wrappers that exist even when the real binary does not.
tool_works() {
  local bindir
  if "$1" --version >/dev/null 2>&1; then return 0; fi
  bindir=$(pg_server_bindir) || return 1
  "$bindir/$1" --version >/dev/null 2>&1
}

# bindgen (clang-sys) loads libclang.so / libclang-N.so (not libclang-cpp) and
# needs clang's builtin headers (stddef.h, from libclang-common-N-dev).
have_libclang() {
  local lib=0 hdr=0
  if [[ -n ${LIBCLANG_PATH:-} ]] && compgen -G "$LIBCLANG_PATH/libclang*.so*" >/dev/null; then
    lib=1
  elif compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
    compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null ||
    ldconfig -p 2>/dev/null | grep -Eq '[[:space:]]libclang(-[0-9.]+)?\.so'; then
    lib=1
  fi
  if compgen -G '/usr/lib/llvm-*/lib/clang/*/include/stddef.h' >/dev/null ||
    compgen -G '/usr/lib/clang/*/include/stddef.h' >/dev/null ||
    compgen -G '/usr/local/lib/clang/*/include/stddef.h' >/dev/null; then
    hdr=1
  fi
  ((lib && hdr))
}

have_pgbouncer() {
  command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]]
}

packages=()
need() {
  local p q
  for p in "$@"; do
    for q in ${packages[@]+"${packages[@]}"}; do
      [[ $q == "$p" ]] && continue 2
    done
    packages+=("$p")
  done
}

check_all() {
  packages=()
  pg_server_bindir >/dev/null || need postgresql
  tool_works psql || need postgresql-client
  tool_works pgbench || need postgresql postgresql-client
  have_libclang || need libclang-dev
  command -v pkg-config >/dev/null 2>&1 || need pkg-config
  # chattr: the audit tests make a directory immutable to simulate a disk that refuses writes.
  command -v chattr >/dev/null 2>&1 || need e2fsprogs
  # Deployment files: scripts pass shellcheck, docker-compose.yml passes dclint (from npm),
  # the compose demo's certificates are made with openssl.
  command -v shellcheck >/dev/null 2>&1 || need shellcheck
  command -v npm >/dev/null 2>&1 || need npm
  command -v openssl >/dev/null 2>&1 || need openssl
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need python3-venv
  # The client matrix: pgjdbc needs Java and the driver jar from Debian.
  command -v java >/dev/null 2>&1 || need default-jre-headless
  [[ -f /usr/share/java/postgresql.jar ]] || need libpostgresql-jdbc-java
  if ((with_pgbouncer)); then have_pgbouncer || need pgbouncer; fi
}

check_all
if ((${#packages[@]} == 0)); then
  log "all present (PostgreSQL server binaries in $(pg_server_bindir))"
  exit 0
fi

install_cmd="apt-get install -y --no-install-recommends ${packages[*]}"
log "missing packages: ${packages[*]}"

if ((EUID != 0)); then
  if command -v apt-get >/dev/null 2>&1; then
    log "not root; install them with:"
    echo "sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive $install_cmd"
  else
    log "no apt-get here: install the equivalents of: ${packages[*]}"
  fi
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  log "no apt-get here: install the equivalents of: ${packages[*]}"
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log "running: apt-get update && $install_cmd"
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}" </dev/null

check_all
if ((${#packages[@]} != 0)); then
  log "still missing after install: ${packages[*]}"
  exit 1
fi
log "installed; PostgreSQL server binaries in $(pg_server_bindir)"
