#!/usr/bin/env bash
# Instructions pgwarden spends per pgbench -S transaction, counted by callgrind: repeatable
# on a busy machine, unlike TPS. Runs `pgwarden demo` under callgrind, initialises pgbench
# tables through it, then for each protocol mode counts the instructions of a short and a
# long run and prints the difference per transaction (so login costs cancel out).
#
#   benches/relay-instructions.sh            # needs valgrind (apt-get install valgrind)
#
# Environment: SHORT [500], LONG [3500] transactions; PORT [6543]; SSLMODE [disable].
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHORT=${SHORT:-500}
LONG=${LONG:-3500}
PORT=${PORT:-6543}
export PGPASSWORD=demo PGSSLMODE=${SSLMODE:-disable}

command -v valgrind >/dev/null || { echo "relay-instructions.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
"$root/scripts/deps.sh" >/dev/null
cargo build --release --manifest-path "$root/Cargo.toml" >&2
work=$(mktemp -d)
demo_pid=""
cleanup() {
  if [[ -n $demo_pid ]]; then kill -INT "$demo_pid" 2>/dev/null || true; wait "$demo_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
  "$root/target/release/pgwarden" demo --listen "127.0.0.1:$PORT" >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 120); do
  grep -q "Press Ctrl-C" "$work/demo.log" && break
  sleep 1
done
grep -q "Press Ctrl-C" "$work/demo.log" || { cat "$work/demo.log" >&2; exit 1; }

conn=(-h 127.0.0.1 -p "$PORT" -U developer)
pgbench -i -q -s 1 "${conn[@]}" shop >/dev/null 2>&1

count() { # mode transactions -> instructions
  callgrind_control -z "$demo_pid" >/dev/null
  pgbench -S -n -M "$1" -c 1 -t "$2" "${conn[@]}" shop >/dev/null
  callgrind_control -d "$demo_pid" >/dev/null
  sleep 1
  # shellcheck disable=SC2012 # file names are ours
  awk '/^(summary|totals):/ {print $2; exit}' "$(ls -t "$work"/cg.* | head -1)"
}

printf '%-9s %s\n' mode "instructions/transaction (sslmode=$PGSSLMODE)"
for mode in simple extended prepared; do
  short=$(count "$mode" "$SHORT")
  long=$(count "$mode" "$LONG")
  printf '%-9s %d\n' "$mode" $(((long - short) / (LONG - SHORT)))
done
