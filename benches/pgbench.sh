#!/usr/bin/env bash
# End-to-end benchmark: pgbench straight to PostgreSQL vs through pgwarden, in
# the same run, interleaved (direct, proxy, direct, proxy, ...) so drift on the
# machine hits both sides alike.
#
#   benches/pgbench.sh
#
# Environment (defaults in brackets):
#   DURATION   seconds per pgbench run [10]
#   ROUNDS     direct/proxy pairs per cell; the table shows medians [2]
#   SCALE      pgbench -i scale factor [10]
#   WORKLOADS  pgbench built-in script:protocol pairs
#              ["select-only:simple select-only:extended select-only:prepared tpcb-like:simple"]
#   CLIENTS    client counts ["1 8 32"]; threads = min(clients, 2)
#   CONNECT    clients for a connection-setup run (pgbench -C: a new connection, with
#              SCRAM, per select-only transaction); empty skips it ["8"]
#   PGWARDEN_BIN  use this binary instead of building target/release/pgwarden
#   RUST_LOG   pgwarden's log filter [warn]
#   UPSTREAM   tcp: pgwarden (and pgbouncer) reach PostgreSQL over TCP on 127.0.0.1, like the
#              direct runs; unix: over its Unix socket, as a sidecar on the same host would
#              [tcp]
#   AUDIT      1: also measure a pgwarden with every feature on: the audit log (a
#              statement record before and a result record after every statement), a
#              masking rule on a table the workload does not touch and the content
#              detectors, and the same pgwarden without the audit log ("audit off"), and
#              verify the log at the end [1]
#   AUDIT_FSYNC  the audit log's audit.fsync: batch, always or buffered [batch]
#   BULK_ROWS  rows of a table read whole with one SELECT through each target (direct,
#              pgwarden without masking, pgwarden masking one column of every row and
#              scanning the text columns with the detectors); 0 skips it [1000000]
#   PGBOUNCER  1: also measure pgbouncer (session pooling, SCRAM both ways; installed with
#              scripts/deps.sh --with-pgbouncer when missing) as a reference for what any
#              extra hop costs on this machine [1]
#
# Both sides use TCP on 127.0.0.1 and SCRAM; apart from the -C run each pgbench client
# logs in once, so the numbers measure the relay, not login cost. select-only (`-S`, one
# primary-key SELECT per transaction) is the worst case for a proxy's per-message
# overhead; tpcb-like adds writes (and an audit record pair per statement). "cpu µs" is pgwarden's own CPU time (user + system) per
# transaction, steadier than tps on a box where pgbench, PostgreSQL and the proxies share
# the cores. The table is also written to
# target/bench/pgbench-<date>.txt, the raw pgbench output next to it (.log).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
SCALE=${SCALE:-10}
WORKLOADS=${WORKLOADS:-select-only:simple select-only:extended select-only:prepared tpcb-like:simple}
CLIENTS=${CLIENTS:-1 8 32}
CONNECT=${CONNECT-8}
for v in DURATION ROUNDS SCALE; do
  if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then
    echo "pgbench.sh: $v must be a positive integer, got '${!v}'" >&2
    exit 2
  fi
done

BENCH_USER=bench
BENCH_DB=bench
BENCH_PASSWORD=benchpw

say() { echo "== $*" >&2; }
die() {
  echo "pgbench.sh: $*" >&2
  exit 1
}

# --- cleanup, installed before anything is started ------------------------

tmp=""
pg_started=""
pgwarden_pids=()
pgbouncer_pid=""

as_pg() {
  if ((EUID == 0)); then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

stop_process() { # pid: TERM, then KILL after 5 s
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in {1..50}; do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  local pid
  for pid in "${pgwarden_pids[@]}"; do
    stop_process "$pid"
  done
  if [[ -n $pgbouncer_pid ]]; then
    # The background job is a shell (and runuser, as root) around pgbouncer, and a TERM to
    # it does not reach pgbouncer: stop pgbouncer itself, by the pid it wrote.
    if [[ -s $tmp/pgbouncer.pid ]]; then
      stop_process "$(cat "$tmp/pgbouncer.pid")"
    fi
    kill -TERM "$pgbouncer_pid" 2>/dev/null
    wait "$pgbouncer_pid" 2>/dev/null
  fi
  if [[ -n $pg_started ]]; then
    as_pg "$pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1
  fi
  if [[ -n $tmp && -d $tmp ]]; then
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools -----------------------------------------------------------------

scripts/deps.sh

# Same lookup order as the integration tests and scripts/deps.sh.
find_bindir() {
  local d
  for d in "${PG_BINDIR:-}" "$(pg_config --bindir 2>/dev/null || true)" \
    $(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV) \
    "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")"; do
    if [[ -n $d && -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}
bindir=$(find_bindir) || die "PostgreSQL server binaries not found (set PG_BINDIR)"
pg_ctl=$bindir/pg_ctl
pick() { # prefer the server's own client binaries (same version)
  if [[ -x $bindir/$1 ]]; then echo "$bindir/$1"; else command -v "$1"; fi
}
psql=$(pick psql) || die "psql not found"
pgbench=$(pick pgbench) || die "pgbench not found"

if [[ -n ${PGWARDEN_BIN:-} ]]; then
  pgwarden=$(readlink -f "$PGWARDEN_BIN")
else
  say "cargo build --release"
  cargo build --release
  pgwarden=$root/target/release/pgwarden
fi
[[ -x $pgwarden ]] || die "no pgwarden binary at $pgwarden"

# A port nothing listens on right now (bash's /dev/tcp: connect succeeds = taken).
free_port() {
  local p
  for _ in {1..100}; do
    p=$((20000 + RANDOM % 30000))
    if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# --- throwaway PostgreSQL ----------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pgwarden-bench.XXXXXX")
if ((EUID == 0)); then
  # initdb refuses to run as root: the cluster belongs to `postgres`.
  id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user (created by the postgresql package)"
  chown postgres: "$tmp"
fi

pg_port=$(free_port) || die "no free port"
say "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') in $tmp, port $pg_port"
as_pg "$bindir/initdb" -D "$tmp/data" -U postgres -E UTF8 --locale=C \
  --auth-host=scram-sha-256 --auth-local=trust --no-sync >"$tmp/initdb.log" 2>&1 ||
  {
    cat "$tmp/initdb.log" >&2
    die "initdb failed"
  }
cat >>"$tmp/data/postgresql.conf" <<EOF
# benches/pgbench.sh
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$tmp'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
pg_started=1
as_pg "$pg_ctl" -D "$tmp/data" -l "$tmp/postgres.log" -w -t 60 start >/dev/null ||
  {
    cat "$tmp/postgres.log" >&2
    die "pg_ctl start failed"
  }

"$psql" -X -q -v ON_ERROR_STOP=1 -h "$tmp" -p "$pg_port" -U postgres -d postgres \
  -c "CREATE ROLE $BENCH_USER LOGIN PASSWORD '$BENCH_PASSWORD'" \
  -c "CREATE DATABASE $BENCH_DB OWNER $BENCH_USER" >/dev/null

export PGPASSWORD=$BENCH_PASSWORD
say "pgbench -i -s $SCALE"
"$pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$pg_port" -U "$BENCH_USER" "$BENCH_DB" \
  >"$tmp/pgbench-init.log" 2>&1 ||
  {
    cat "$tmp/pgbench-init.log" >&2
    die "pgbench -i failed"
  }
# A table with a masked column, which the pgbench workload never reads (masking's
# per-result cost without masked values), and which the bulk SELECT reads whole.
BULK_ROWS=${BULK_ROWS:-1000000}
say "pii_customers: $BULK_ROWS rows"
"$psql" -X -q -h 127.0.0.1 -p "$pg_port" -U "$BENCH_USER" -d "$BENCH_DB" \
  -c 'CREATE TABLE pii_customers (id int PRIMARY KEY, full_name text, email text)' \
  -c "INSERT INTO pii_customers SELECT g, 'Customer number ' || g, 'customer.' || g || '@example.com' FROM generate_series(1, $BULK_ROWS) g" \
  >/dev/null || die "cannot create pii_customers"

# --- pgwarden ----------------------------------------------------------------

case ${UPSTREAM:-tcp} in
  tcp) upstream_host=127.0.0.1 ;;
  unix) upstream_host=$tmp ;;
  *) die "UPSTREAM must be tcp or unix, got '${UPSTREAM}'" ;;
esac

verifier=$(printf '%s' "$BENCH_PASSWORD" | "$pgwarden" hash-password) ||
  die "'pgwarden hash-password' failed"
verifier=$(printf '%s\n' "$verifier" | grep -m1 -o 'SCRAM-SHA-256\$[^[:space:]]*') ||
  die "'pgwarden hash-password' printed no SCRAM-SHA-256\$ verifier"

# Writes a pgwarden config listening on $1 (plus the TOML in $2) and starts pgwarden on it;
# sets started_pid.
start_pgwarden() { # port extra-toml name
  local port=$1 extra=$2 name=$3 cfg=$tmp/pgwarden-$3.toml deadline pid
  cat >"$cfg" <<EOF
# written by benches/pgbench.sh
[server]
listen = "127.0.0.1:$port"
max_connections = 1000

[server.tls]
mode = "disabled"

[upstream]
host = "$upstream_host"
port = $pg_port
sslmode = "disable"

[[upstream.roles]]
name = "$BENCH_USER"
password = "env:BENCH_UPSTREAM_PASSWORD"

[[auth.local]]
name = "$BENCH_USER"
scram = "$verifier"
groups = ["$BENCH_USER"]

[[access]]
users = ["$BENCH_USER"]
databases = ["$BENCH_DB"]
roles = ["$BENCH_USER"]
$extra
EOF
  say "pgwarden ($name) serve on port $port"
  # cwd = the temp dir, so any relative path pgwarden writes goes away with it.
  (
    cd "$tmp"
    export BENCH_UPSTREAM_PASSWORD=$BENCH_PASSWORD
    export RUST_LOG=${RUST_LOG:-warn}
    exec "$pgwarden" serve --config "$cfg"
  ) </dev/null >"$tmp/pgwarden-$name.log" 2>&1 &
  pid=$!
  pgwarden_pids+=("$pid")
  deadline=$((SECONDS + 30))
  until "$psql" -X -q -tA -h 127.0.0.1 -p "$port" -U "$BENCH_USER" -d "$BENCH_DB" \
    -c 'select 1' >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$tmp/pgwarden-$name.log" >&2
      die "pgwarden ($name) exited before accepting connections"
    fi
    if ((SECONDS >= deadline)); then
      cat "$tmp/pgwarden-$name.log" >&2
      die "pgwarden ($name) did not accept connections within 30 s"
    fi
    sleep 0.2
  done
  started_pid=$pid
}

proxy_port=$(free_port) || die "no free port"
# The relay alone: no audit, no masking (the content detectors are on by default).
start_pgwarden "$proxy_port" "[masking.detectors]
enabled = []" plain
plain_pid=$started_pid

AUDIT=${AUDIT:-1}
AUDIT_FSYNC=${AUDIT_FSYNC:-batch}
case $AUDIT_FSYNC in
  batch | always | buffered) ;;
  *) die "AUDIT_FSYNC must be batch, always or buffered, got '$AUDIT_FSYNC'" ;;
esac
if ((AUDIT)); then
  masking_rule="[[masking.rules]]
table = \"public.pii_customers\"
column = \"email\"
strategy = \"email\""
  noaudit_port=$(free_port) || die "no free port"
  start_pgwarden "$noaudit_port" "$masking_rule" noaudit
  noaudit_pid=$started_pid
  audit_port=$(free_port) || die "no free port"
  start_pgwarden "$audit_port" "[audit]
dir = \"$tmp/audit\"
fsync = \"$AUDIT_FSYNC\"

$masking_rule" audit
  audit_pid=$started_pid
fi

# --- pgbouncer (reference) ------------------------------------------------------

pgbouncer_bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
PGBOUNCER=${PGBOUNCER:-1}
if ((PGBOUNCER)) && [[ ! -x $pgbouncer_bin ]]; then
  say "pgbouncer is missing: scripts/deps.sh --with-pgbouncer"
  "$root/scripts/deps.sh" --with-pgbouncer >&2 ||
    die "cannot install pgbouncer (run the command above, or PGBOUNCER=0 to skip it)"
  pgbouncer_bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
fi
targets=(direct pgwarden)
if ((AUDIT)); then targets+=(noaudit audit); fi
if ((PGBOUNCER)); then
  [[ -x $pgbouncer_bin ]] || die "PGBOUNCER=1 but pgbouncer is not installed (scripts/deps.sh --with-pgbouncer)"
  bouncer_port=$(free_port) || die "no free port"
  cat >"$tmp/pgbouncer.ini" <<INI
[databases]
$BENCH_DB = host=$upstream_host port=$pg_port dbname=$BENCH_DB
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $tmp/pgbouncer.users
pool_mode = session
default_pool_size = 64
max_client_conn = 1000
logfile = $tmp/pgbouncer.log
pidfile = $tmp/pgbouncer.pid
INI
  printf '"%s" "%s"\n' "$BENCH_USER" "$BENCH_PASSWORD" >"$tmp/pgbouncer.users"
  if ((EUID == 0)); then chown postgres: "$tmp/pgbouncer.ini" "$tmp/pgbouncer.users"; fi
  # pgbouncer refuses to run as root.
  as_pg "$pgbouncer_bin" "$tmp/pgbouncer.ini" </dev/null >/dev/null 2>&1 &
  pgbouncer_pid=$!
  deadline=$((SECONDS + 30))
  until "$psql" -X -q -tA -h 127.0.0.1 -p "$bouncer_port" -U "$BENCH_USER" -d "$BENCH_DB" \
    -c 'select 1' >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "pgbouncer did not accept connections within 30 s (log: $tmp/pgbouncer.log)"
    sleep 0.2
  done
  say "pgbouncer $("$pgbouncer_bin" --version | head -1 | awk '{print $2}') on port $bouncer_port"
  targets+=(pgbouncer)
fi

# --- runs ----------------------------------------------------------------------

mkdir -p target/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=target/bench/pgbench-$stamp.txt
raw=target/bench/pgbench-$stamp.log
: >"$raw"

# Runs pgbench once; prints its tps or "fail". A workload is script:protocol, or
# "connect" (select-only with a new connection per transaction).
run_one() { # target port workload clients
  local target=$1 port=$2 workload=$3 c=$4 j output tps script mode extra=()
  j=$((c < 2 ? c : 2))
  if [[ $workload == connect ]]; then
    script=select-only mode=simple extra=(-C)
  else
    script=${workload%%:*} mode=${workload#*:}
  fi
  {
    echo "### $target $script mode=$mode ${extra[*]} clients=$c threads=$j duration=${DURATION}s"
  } >>"$raw"
  if output=$("$pgbench" -b "$script" ${extra[@]+"${extra[@]}"} -n -M "$mode" -c "$c" -j "$j" \
    -T "$DURATION" -h 127.0.0.1 -p "$port" -U "$BENCH_USER" "$BENCH_DB" 2>&1); then
    tps=$(printf '%s\n' "$output" | awk '/^tps = / {print $3; exit}')
  fi
  printf '%s\n\n' "$output" >>"$raw"
  echo "${tps:-fail}"
}

# The median of numbers ("fail" entries skipped): median_fmt DECIMALS EMPTY NUMBERS...,
# printing EMPTY when there are none.
median_fmt() {
  local decimals=$1 empty=$2
  shift 2
  printf '%s\n' "$@" | grep -v '^fail$' | sort -g |
    awk -v d="$decimals" -v empty="$empty" '{ a[NR] = $1 } END {
      if (NR == 0) print empty
      else if (NR % 2) printf "%.*f\n", d, a[(NR + 1) / 2]
      else printf "%.*f\n", d, (a[NR / 2] + a[NR / 2 + 1]) / 2
    }'
}
median() { median_fmt 0 fail "$@"; }   # tps
median1() { median_fmt 1 - "$@"; }     # cpu µs
median_secs() { median_fmt 3 fail "$@"; }

# CPU seconds (user + system) a process has used so far.
cpu_seconds() { # pid
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / hz }' "/proc/$1/stat"
}

declare -A results port cpu pid_of
port[direct]=$pg_port
port[pgwarden]=$proxy_port
port[noaudit]=${noaudit_port:-}
port[audit]=${audit_port:-}
pid_of[pgwarden]=$plain_pid
pid_of[noaudit]=${noaudit_pid:-}
pid_of[audit]=${audit_pid:-}
port[pgbouncer]=${bouncer_port:-}
failures=0
# The cells of the table: workload,clients.
cells=()
for workload in $WORKLOADS; do
  for c in $CLIENTS; do cells+=("$workload,$c"); done
done
for c in $CONNECT; do cells+=("connect,$c"); done
for cell in "${cells[@]}"; do
  workload=${cell%,*} c=${cell##*,}
  for ((r = 1; r <= ROUNDS; r++)); do
    line="$workload c=$c round $r/$ROUNDS:"
    for target in "${targets[@]}"; do
      pid=${pid_of[$target]:-}
      [[ -n $pid ]] && before=$(cpu_seconds "$pid")
      tps=$(run_one "$target" "${port[$target]}" "$workload" "$c")
      if [[ -n $pid && $tps != fail ]]; then
        # pgwarden's own CPU per transaction, in µs: steadier than tps on a busy box.
        cpu[$cell,$target]+=" $(awk -v a="$before" -v b="$(cpu_seconds "$pid")" -v t="$tps" -v d="$DURATION" \
          'BEGIN { printf "%.1f", (b - a) * 1e6 / (t * d) }')"
      fi
      [[ $tps == fail ]] && failures=$((failures + 1))
      results[$cell,$target]+=" $tps"
      line+=" $target $tps"
    done
    say "$line"
  done
done

# --- bulk SELECT ------------------------------------------------------------------

# Seconds for psql to fetch the whole of pii_customers through port $1, or "fail".
bulk_one() { # port
  local start end
  start=$(date +%s.%N)
  if "$psql" -X -q -A -t -o /dev/null -h 127.0.0.1 -p "$1" -U "$BENCH_USER" -d "$BENCH_DB" \
    -c 'SELECT * FROM pii_customers' 2>>"$raw"; then
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }'
  else
    echo fail
  fi
}

declare -A bulk
bulk_targets=(direct pgwarden)
if ((AUDIT)); then bulk_targets+=(audit); fi
if ((BULK_ROWS > 0)); then
  for ((r = 1; r <= ROUNDS; r++)); do
    line="bulk SELECT round $r/$ROUNDS:"
    for target in "${bulk_targets[@]}"; do
      secs=$(bulk_one "${port[$target]}")
      [[ $secs == fail ]] && failures=$((failures + 1))
      bulk[$target]+=" $secs"
      line+=" $target ${secs}s"
    done
    say "$line"
  done
  # The masking pgwarden really masked: its result differs from the direct one.
  direct_row=$("$psql" -X -q -A -t -h 127.0.0.1 -p "$pg_port" -U "$BENCH_USER" -d "$BENCH_DB" \
    -c 'SELECT email FROM pii_customers WHERE id = 1')
  if ((AUDIT)); then
    masked_row=$("$psql" -X -q -A -t -h 127.0.0.1 -p "$audit_port" -U "$BENCH_USER" -d "$BENCH_DB" \
      -c 'SELECT email FROM pii_customers WHERE id = 1')
    if [[ $masked_row == "$direct_row" ]]; then
      failures=$((failures + 1))
      say "bulk SELECT: the masking pgwarden returned the real email"
    fi
  fi
fi

# --- report --------------------------------------------------------------------

audit_line=""
if ((AUDIT)); then
  # Stop the auditing pgwarden (its final checkpoint) and check the chain it wrote.
  stop_process "$audit_pid"
  records=$(cat "$tmp"/audit/*.jsonl | wc -l)
  if verdict=$("$pgwarden" audit verify "$tmp/audit" 2>&1); then
    audit_line="audit log: $records records, $(printf '%s\n' "$verdict" | head -1)"
  else
    failures=$((failures + 1))
    audit_line="audit log: verify FAILED: $verdict"
  fi
fi

{
  echo "pgwarden end-to-end benchmark ($stamp)"
  echo "commit:   $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "machine:  $(uname -srm), $(nproc) CPUs"
  echo "postgres: $("$bindir/postgres" --version), fsync=off, scale $SCALE"
  echo "upstream: ${UPSTREAM:-tcp} (how the proxies reach PostgreSQL)"
  echo "pgbench:  -n -T $DURATION, threads = min(clients, 2); $ROUNDS interleaved rounds, median tps"
  echo "columns:  pgwarden = the relay alone; audit off = gate + masking rule + detectors; all"
  echo "          features = the same + audit (fsync = $AUDIT_FSYNC); ratios are to direct, on/off ="
  echo "          all features / audit off; cpu µs = pgwarden's own CPU per transaction"
  echo
  header=$(printf '%-12s %-9s %7s %10s %10s %6s %7s' workload mode clients direct pgwarden ratio "cpu µs")
  if ((AUDIT)); then
    header+=$(printf ' %10s %6s %7s %13s %6s %7s %6s' "audit off" ratio "cpu µs" "all features" ratio "cpu µs" on/off)
  fi
  if ((PGBOUNCER)); then header+=$(printf ' %10s %6s' pgbouncer ratio); fi
  echo "$header"
  ratio() { awk -v p="$1" -v d="$2" 'BEGIN { if (p == "fail" || d == "fail" || d == 0) print "-"; else printf "%.2f", p / d }'; }
  for cell in "${cells[@]}"; do
    workload=${cell%,*} c=${cell##*,}
    if [[ $workload == connect ]]; then
      script="connect (-C)" mode=simple
    else
      script=${workload%%:*} mode=${workload#*:}
    fi
    # shellcheck disable=SC2086 # the lists are space-separated numbers
    dm=$(median ${results[$cell,direct]})
    # shellcheck disable=SC2086
    pm=$(median ${results[$cell,pgwarden]})
    # shellcheck disable=SC2086
    pc=$(median1 ${cpu[$cell,pgwarden]:-fail})
    row=$(printf '%-12s %-9s %7s %10s %10s %6s %7s' "$script" "$mode" "$c" "$dm" "$pm" "$(ratio "$pm" "$dm")" "$pc")
    if ((AUDIT)); then
      # shellcheck disable=SC2086
      nm=$(median ${results[$cell,noaudit]})
      # shellcheck disable=SC2086
      nc=$(median1 ${cpu[$cell,noaudit]:-fail})
      # shellcheck disable=SC2086
      am=$(median ${results[$cell,audit]})
      # shellcheck disable=SC2086
      ac=$(median1 ${cpu[$cell,audit]:-fail})
      row+=$(printf ' %10s %6s %7s %13s %6s %7s %6s' "$nm" "$(ratio "$nm" "$dm")" "$nc" \
        "$am" "$(ratio "$am" "$dm")" "$ac" "$(ratio "$am" "$nm")")
    fi
    if ((PGBOUNCER)); then
      # shellcheck disable=SC2086
      bm=$(median ${results[$cell,pgbouncer]})
      row+=$(printf ' %10s %6s' "$bm" "$(ratio "$bm" "$dm")")
    fi
    echo "$row"
  done
  if ((BULK_ROWS > 0)); then
    echo
    echo "bulk SELECT * of $BULK_ROWS rows (id, full_name, email) with psql, median seconds:"
    # shellcheck disable=SC2086
    bd=$(median_secs ${bulk[direct]})
    # shellcheck disable=SC2086
    bp=$(median_secs ${bulk[pgwarden]})
    line=$(printf '  direct %ss, pgwarden without masking %ss (%s)' "$bd" "$bp" "$(ratio "$bd" "$bp")")
    if ((AUDIT)); then
      # shellcheck disable=SC2086
      ba=$(median_secs ${bulk[audit]})
      line+=$(printf ', all features (email masked in every row, detectors on) %ss (%s)' "$ba" "$(ratio "$bd" "$ba")")
    fi
    echo "$line"
    echo "  (ratio: direct time / time, 1.00 = as fast as direct)"
  fi
  if [[ -n $audit_line ]]; then
    echo
    echo "$audit_line"
  fi
  if ((failures)); then
    echo
    echo "$failures pgbench run(s) failed; their output is in $raw"
  fi
} | tee "$out"
echo "written to $out (raw pgbench output: $raw)" >&2

((failures == 0))
