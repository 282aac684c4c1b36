#!/usr/bin/env bash
# The test command: installs missing system packages (scripts/deps.sh), runs
# every test target, and ends with a one-line summary "N passed, N failed".
#
#   scripts/test.sh [extra cargo test args, e.g. a test name filter]
#
# Plain `cargo test`, not nextest: each integration test binary shares one
# throwaway PostgreSQL across its tests, which needs the tests of a binary to
# run in one process. The full output is kept in target/test.log.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export RUST_BACKTRACE=1
if [[ ${CI:-} == true ]]; then
  export CARGO_TERM_COLOR=never
  # A fresh clone builds once: incremental state would only take disk (over 1 GB).
  export CARGO_INCREMENTAL=0
fi

scripts/deps.sh

mkdir -p target
log=target/test.log

status=0
cargo test --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || {
  pipe=("${PIPESTATUS[@]}")
  status=${pipe[0]}
  if ((status == 0)); then status=${pipe[1]}; fi # tee failed
}

# Sum the per-binary lines:
#   test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...
summary=$(awk '
  /test result:/ {
    for (i = 2; i <= NF; i++) {
      if ($i ~ /^passed;?$/) passed += $(i - 1)
      if ($i ~ /^failed;?$/) failed += $(i - 1)
    }
  }
  END { printf "%d passed, %d failed\n", passed, failed }
' "$log")

if ((status != 0)); then
  echo "cargo test exited with status $status (full output: $log)"
fi
echo "$summary"
exit "$status"
