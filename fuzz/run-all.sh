#!/bin/sh
# Runs every fuzz target, one after the other, for SECONDS each (default 600), starting from the
# committed seeds in seeds/<target>/ and growing corpus/<target>/. Prints libFuzzer's last status
# line per target (full logs in $FUZZ_LOG_DIR, default /tmp); a crash stops that target and
# leaves its input in artifacts/<target>/.
#
#   fuzz/run-all.sh 600                  # every target, 10 minutes each
#   fuzz/run-all.sh 60 config_parse      # one target, 1 minute
set -u
cd "$(dirname "$0")"
secs=${1:-600}
shift 2>/dev/null || true
targets=${*:-"dtab_parse deadline_headers trace_headers config_parse endpoint_file"}
toolchain=${FUZZ_TOOLCHAIN:-+nightly}
logs=${FUZZ_LOG_DIR:-/tmp}
status=0
for t in $targets; do
    mkdir -p "corpus/$t"
    echo "== $t: ${secs}s"
    if cargo $toolchain fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
        | tee "$logs/fuzz-$t.log" | grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|==[0-9]+== ERROR|SUMMARY)'; then :; fi
    if grep -q 'SUMMARY\|panicked\|deadly signal' "$logs/fuzz-$t.log"; then
        echo "$t: FAILED (see $logs/fuzz-$t.log and artifacts/$t/)"
        status=1
    fi
done
exit $status
