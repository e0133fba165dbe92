#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 180), two at once, from the repository root or
# fuzz/. Logs go to LOGS (default fuzz/logs, not committed); the last lines of each are the
# figures fuzz/README.md records. Stable toolchain: RUSTC_BOOTSTRAP=1 enables cargo-fuzz's
# nightly flags; --sanitizer none because AddressSanitizer needs a nightly std.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${SECONDS_PER_TARGET:-180}"
logs="${LOGS:-logs}"
mkdir -p "$logs"
export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$PWD/target"
cargo fuzz build --sanitizer none
targets="${*:-$(cargo fuzz list)}"
run() {
  local t="$1" seeds=()
  mkdir -p "corpus/$t"
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  cargo fuzz run --sanitizer none "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$logs/$t.log" 2>&1 \
    && echo "$t: ok" || echo "$t: FAILED (see $logs/$t.log, fuzz/artifacts/$t)"
}
export -f run
export seconds logs
printf '%s\n' $targets | xargs -P 2 -I{} bash -c 'run {}'
