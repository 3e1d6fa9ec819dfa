#!/usr/bin/env bash
# Loopback proxy benchmark: the same nginx backend reached directly, through HAProxy, nginx,
# mesh-proxy, and two mesh-proxies in a row (plaintext, then mutual TLS between them).
#
#   bash benches/proxy/run.sh            # prints one markdown table on stdout; progress on stderr
#
# Load: wrk for the closed loop (phase `closed`: -t1 -c$CONNS), oha at a fixed rate with latency
# correction (phase `rate-5000`). Backend and proxies are pinned to $SERVER_CPU, the generator to
# $CLIENT_CPU. cpu_us_per_req is the proxies' utime+stime from /proc (summed over both proxies
# of a pair) per completed request; added_p50_ms / added_p99_ms are against `direct` in the same
# phase; rss_mb is the peak RSS (VmHWM) of the largest proxy process of the target.
#
# Installs what it needs (Debian: wrk haproxy nginx-light; oha with `cargo install --locked oha`
# unless NO_OHA=1) and builds mesh-proxy in release mode. Every address is 127.0.0.1, every load
# run is bounded (-d / -z and an outer `timeout`), and every process started here is stopped by
# its PID on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-32}"
RATE="${RATE:-5000}"
WARMUP="${WARMUP:-2}"
CLIENT_CPU="${CLIENT_CPU:-0}"
SERVER_CPU="${SERVER_CPU:-1}"
RUN="${RUN:-$(mktemp -d /tmp/mesh-proxy-bench.XXXXXX)}"
log() { echo "[bench] $*" >&2; }

# ---- what it needs ----------------------------------------------------------------------------
need=()
for tool in wrk haproxy nginx taskset curl python3; do
    command -v "$tool" > /dev/null || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing: wrk haproxy nginx-light util-linux curl python3"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        wrk haproxy nginx-light util-linux curl python3 >&2
fi
OHA="${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}"
if [ ! -x "$OHA" ] && [ "${NO_OHA:-0}" != 1 ]; then
    log "installing oha (cargo install --locked oha; several minutes)"
    cargo install --locked oha >&2
fi
[ -x "$OHA" ] || { log "oha not available: the rate-$RATE phase is skipped"; OHA=""; }
log "building mesh-proxy (release)"
(cd "$ROOT" && cargo build --release --example mesh-proxy >&2)
PROXY="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/mesh-proxy"

# ---- servers ----------------------------------------------------------------------------------
declare -A PORT=([direct]=18080 [haproxy]=18081 [nginx]=18082 [mesh-proxy]=18083
                 [mesh-proxy-pair-plain]=18084 [mesh-proxy-pair-mtls]=18086)
declare -A PIDS=()
STARTED=()
cleanup() {
    set +e
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2> /dev/null; done
    for pid in "${STARTED[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2> /dev/null
    done
}
trap cleanup EXIT INT TERM

start() { # target name cmd...: starts a server of `target` pinned to the server CPU
    local target="$1" name="$2"; shift 2
    taskset -c "$SERVER_CPU" "$@" > "$RUN/$name.out" 2> "$RUN/$name.err" &
    STARTED+=("$!"); PIDS[$target]="${PIDS[$target]:-} $!"
}
wait_ready() { # port
    for _ in $(seq 200); do
        [ "$(curl -s --max-time 1 "http://127.0.0.1:$1/" || true)" = hello ] && return 0
        sleep 0.1
    done
    log "port $1 did not answer 'hello'"; return 1
}

# shellcheck source=benches/proxy/conf.sh
. "$ROOT/benches/proxy/conf.sh"
nginx_conf backend 18080 "" "default_type text/plain; return 200 'hello';"
nginx_conf nginx 18082 "upstream b { server 127.0.0.1:18080; keepalive 128; keepalive_requests 1000000; }" \
    "proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\";"
haproxy_conf 18081 18080

# mesh-proxy: every mesh feature at its default (metrics, balancer, budgeted retries, deadlines,
# breaker); one route sends everything to the backend service.
"$PROXY" ca init "$RUN/certs" > /dev/null
for w in client server; do
    "$PROXY" ca issue --identity "spiffe://bench.test/ns/bench/sa/$w" "$RUN/certs" > /dev/null
done
mesh_conf single 18083 "" 19990 18080 "" ""
mesh_conf plain-a 18084 "" 19991 18085 "" ""
mesh_conf plain-b 18090 18085 19992 18080 "" ""
mesh_conf mtls-a 18086 "" 19993 18087 "spiffe://bench.test/ns/bench/sa/server" client
mesh_conf mtls-b 18091 18087 19994 18080 "" server

start direct backend nginx -c "$RUN/backend.conf"
wait_ready 18080
start haproxy haproxy haproxy -db -f "$RUN/haproxy.cfg"
start nginx nginx nginx -c "$RUN/nginx.conf"
export MESH_PROXY_LOG=warn
start mesh-proxy single "$PROXY" run "$RUN/single.toml"
start mesh-proxy-pair-plain plain-b "$PROXY" run "$RUN/plain-b.toml"
start mesh-proxy-pair-plain plain-a "$PROXY" run "$RUN/plain-a.toml"
start mesh-proxy-pair-mtls mtls-b "$PROXY" run "$RUN/mtls-b.toml"
start mesh-proxy-pair-mtls mtls-a "$PROXY" run "$RUN/mtls-a.toml"
TARGETS="direct haproxy nginx mesh-proxy mesh-proxy-pair-plain mesh-proxy-pair-mtls"
for t in $TARGETS; do wait_ready "${PORT[$t]}"; done
BACKEND_PID="${PIDS[direct]}"

cpu_ticks() { # pids... -> utime+stime summed
    local t=0 p
    for p in "$@"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done
    echo "$t"
}
hwm_kb() { # pids... -> largest VmHWM
    local m=0 p v
    for p in "$@"; do v=$(awk '/VmHWM/{print $2}' "/proc/$p/status"); [ "$v" -gt "$m" ] && m=$v; done
    echo "$m"
}

log "warm-up"
for t in $TARGETS; do
    timeout $((WARMUP + 10)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" \
        "http://127.0.0.1:${PORT[$t]}/" > /dev/null
done

RES="$RUN/results.tsv"
: > "$RES"
measure() { # phase target
    local phase="$1" t="$2" url="http://127.0.0.1:${PORT[$2]}/" out="$RUN/$1-$2.txt"
    local pids="${PIDS[$t]}"; [ "$t" = direct ] && pids="$BACKEND_PID"
    # shellcheck disable=SC2086
    local c0; c0=$(cpu_ticks $pids)
    if [ "$phase" = closed ]; then
        timeout $((DURATION + 15)) taskset -c "$CLIENT_CPU" \
            wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url" > "$out" 2>&1
    else
        timeout $((DURATION + 15)) taskset -c "$CLIENT_CPU" \
            "$OHA" -z "${DURATION}s" -q "$RATE" -c "$CONNS" --latency-correction \
            --no-tui --output-format json "$url" > "$out" 2>&1
    fi
    # shellcheck disable=SC2086
    local c1 hwm; c1=$(cpu_ticks $pids); hwm=$(hwm_kb $pids)
    printf '%s\t%s\t%s\t%s\t%s\n' "$phase" "$t" "$out" "$((c1 - c0))" "$hwm" >> "$RES"
    log "$phase $t done"
}
for t in $TARGETS; do measure closed "$t"; done
if [ -n "$OHA" ]; then
    for t in $TARGETS; do measure "rate-$RATE" "$t"; done
fi
log "raw results in $RUN"

python3 - "$RES" "$(getconf CLK_TCK)" <<'EOF'
import json, re, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
clk = int(sys.argv[2])
def ms(v):
    n, u = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v).groups()
    return float(n) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[u]
res = {}
for phase, target, path, ticks, hwm in rows:
    text = open(path, errors="replace").read()
    if phase == "closed":
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
        total = int(re.search(r"(\d+) requests in", text).group(1))
        pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
        p50, p99 = ms(pct["50"]), ms(pct["99"])
    else:
        j = json.loads(text[text.index("{"):])
        rps = j["summary"]["requestsPerSec"]
        total = sum(j.get("statusCodeDistribution", {}).values())
        p50, p99 = j["latencyPercentiles"]["p50"] * 1e3, j["latencyPercentiles"]["p99"] * 1e3
    cpu_us = int(ticks) / clk * 1e6 / total if total else float("nan")
    res[(phase, target)] = (rps, cpu_us, p50, p99, int(hwm) / 1024)
print("| phase | target | rps | cpu_us_per_req | added_p50_ms | added_p99_ms | rss_mb |")
print("|---|---|---|---|---|---|---|")
for (phase, target), (rps, cpu, p50, p99, rss) in res.items():
    d = res.get((phase, "direct"))
    if target == "direct":
        print(f"| {phase} | {target} | {rps:.0f} | - | 0.000 | 0.000 | - |")
    else:
        print(f"| {phase} | {target} | {rps:.0f} | {cpu:.1f} | {p50 - d[2]:.3f} | {p99 - d[3]:.3f} | {rss:.1f} |")
EOF
