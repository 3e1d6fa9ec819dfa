#!/usr/bin/env bash
# Closed-loop A/B of proxy binaries beside HAProxy, in alternating rounds: for telling two builds
# of mesh-proxy apart on a machine whose neighbours add noise (one run of `run.sh` cannot).
#
#   bash benches/proxy/ab.sh ROUNDS BINARY...     # e.g. ab.sh 10 ./before ./after
#
# The same nginx backend (`return 200 'hello'`) on 127.0.0.1; HAProxy and every binary in front
# of it (a binary is started as `BINARY run FILE.toml` with one route to the backend and every
# mesh feature at its defaults, or, if its name starts with `hyper_baseline` (the example of that
# name: hyper alone, no mesh feature), as `BINARY LISTEN BACKEND-URL`).
# Backend and proxies on CPU $SERVER_CPU, wrk (-t1 -c32, $DUR s) on CPU $CLIENT_CPU. Each round
# measures HAProxy and then every binary; the summary gives, per target, the median over the
# rounds of CPU µs per request (utime+stime from /proc, split into user and sys), requests/s,
# the ratio of the median to HAProxy's median, and the peak RSS (VmHWM).
# Needs wrk, haproxy, nginx, taskset, python3 (run.sh installs them). Every process started here
# is stopped on exit; every load run is bounded by wrk's -d and an outer `timeout`.
set -euo pipefail

ROUNDS="${1:?usage: ab.sh ROUNDS BINARY...}"; shift
[ $# -gt 0 ] || { echo "usage: ab.sh ROUNDS BINARY..." >&2; exit 2; }
DUR="${DUR:-3}"
CLIENT_CPU="${CLIENT_CPU:-0}"
SERVER_CPU="${SERVER_CPU:-1}"
RUN="$(mktemp -d /tmp/mesh-proxy-ab.XXXXXX)"
STARTED=()
trap 'for p in "${STARTED[@]}"; do kill "$p" 2> /dev/null || true; done' EXIT INT TERM

# shellcheck source=benches/proxy/conf.sh
. "$(cd "$(dirname "$0")" && pwd)/conf.sh"
nginx_conf backend 28080 "" "default_type text/plain; return 200 'hello';"
haproxy_conf 28081 28080

taskset -c "$SERVER_CPU" nginx -c "$RUN/backend.conf" & STARTED+=("$!")
taskset -c "$SERVER_CPU" haproxy -db -f "$RUN/haproxy.cfg" > "$RUN/haproxy.log" 2>&1 &
STARTED+=("$!")
NAMES=(haproxy); PIDS=("$!"); PORTS=(28081)
port=28090
for bin in "$@"; do
    if [[ "$(basename "$bin")" == hyper_baseline* ]]; then
        taskset -c "$SERVER_CPU" "$bin" "127.0.0.1:$port" http://127.0.0.1:28080 \
            > "$RUN/$port.log" 2>&1 &
    else
        mesh_conf "$port" "$port" "" "$((port + 100))" 28080 "" ""
        MESH_PROXY_LOG=warn taskset -c "$SERVER_CPU" "$bin" run "$RUN/$port.toml" \
            > "$RUN/$port.log" 2>&1 &
    fi
    STARTED+=("$!"); NAMES+=("$bin"); PIDS+=("$!"); PORTS+=("$port")
    port=$((port + 1))
done
for p in "${PORTS[@]}"; do
    for _ in $(seq 100); do
        [ "$(curl -s --max-time 1 "http://127.0.0.1:$p/" || true)" = hello ] && break
        sleep 0.1
    done
done

stat_of() { awk '{print $14, $15}' "/proc/$1/stat"; }
for i in "${!NAMES[@]}"; do # warm-up
    timeout 20 taskset -c "$CLIENT_CPU" wrk -t1 -c32 -d1s "http://127.0.0.1:${PORTS[$i]}/" > /dev/null
done
: > "$RUN/rounds.tsv"
for round in $(seq "$ROUNDS"); do
    for i in "${!NAMES[@]}"; do
        read -r u0 s0 < <(stat_of "${PIDS[$i]}")
        out=$(timeout $((DUR + 15)) taskset -c "$CLIENT_CPU" \
            wrk -t1 -c32 -d"${DUR}s" "http://127.0.0.1:${PORTS[$i]}/")
        read -r u1 s1 < <(stat_of "${PIDS[$i]}")
        n=$(echo "$out" | awk '/requests in/{print $1}')
        hwm=$(awk '/VmHWM/{print $2}' "/proc/${PIDS[$i]}/status")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "${NAMES[$i]}" "$n" "$((u1 - u0))" \
            "$((s1 - s0))" "$DUR" "$hwm" >> "$RUN/rounds.tsv"
    done
    echo "[ab] round $round of $ROUNDS done" >&2
done

python3 - "$RUN/rounds.tsv" "$(getconf CLK_TCK)" <<'EOF'
import collections, statistics, sys
clk = int(sys.argv[2])
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    _, name, n, u, s, dur, hwm = line.rstrip("\n").split("\t")
    n = int(n)
    rows[name].append(((int(u) + int(s)) * 1e6 / clk / n, int(u) * 1e6 / clk / n,
                       int(s) * 1e6 / clk / n, n / float(dur), int(hwm) / 1024))
med = {k: [statistics.median(x[i] for x in v) for i in range(4)] for k, v in rows.items()}
base = med["haproxy"][0]
print("| target | rounds | cpu_us_per_req (median) | user | sys | rps | ratio to haproxy | rss_mb |")
print("|---|---|---|---|---|---|---|---|")
for name, v in rows.items():
    m = med[name]
    print(f"| {name} | {len(v)} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} | {m[3]:.0f} | "
          f"{m[0] / base:.2f} | {max(x[4] for x in v):.1f} |")
EOF
