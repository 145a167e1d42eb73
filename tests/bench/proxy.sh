#!/usr/bin/env bash
# Proxy benchmark: the mock upstream directly, through nginx and through krouter, with the
# same client (krouter-load), the same upstream (krouter-demo-upstream) and the same requests,
# in one run. See docs/benchmarks.md, "Proxy: direct vs nginx vs krouter".
#
# usage: bash tests/bench/proxy.sh [--quick] [--no-build] [--keep] [--baseline=DIR] [--pairs=N]
#   --quick     short runs (0.5 s warm-up + 2 s each) for a smoke test; figures are rough
#   --no-build  use the release binaries already in the target directory
#   --keep      keep the temporary directory (logs, configs, raw results) and print its path
#   --baseline=DIR  also run DIR/krouter (an earlier release build) in the same runs, for A/B
#   --pairs=N   then N more rounds at 32 and 256 connections, the proxies back to back (4 s
#               each), and the median of each round's CPU ratio: drift on a shared machine
#               moves both sides of a round alike; then N rounds more with nginx and krouter
#               paced at the same rate (half the slower one's rate above), neither the
#               bottleneck, for their CPU per request at equal work
#
# It installs nginx (Debian package nginx-light, else nginx) with apt-get when it is missing,
# builds the release binaries, uses only 127.0.0.1 and ports it picks, and stops everything it
# started when it exits. Raw per-run JSON goes to $tmp/results.jsonl.
set -euo pipefail

# The whole script is one block, so bash reads it all before running: editing the file during
# a run cannot change the run.
{
usage() { sed -n '6,13s/^# \{0,1\}//p' "$0"; }

quick=0 build=1 keep=0 baseline= pairs=0
for arg in "$@"; do
    case $arg in
        --quick) quick=1 ;;
        --pairs=*) pairs=${arg#--pairs=}; [[ $pairs =~ ^[0-9]+$ ]] || { echo "proxy.sh: --pairs needs a number" >&2; exit 64; } ;;
        --baseline=*) baseline=${arg#--baseline=} ;;
        --no-build) build=0 ;;
        --keep) keep=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "proxy.sh: unexpected argument $arg" >&2; usage >&2; exit 64 ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Where cargo puts binaries (CARGO_TARGET_DIR or a cargo config may move it).
target_dir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
bin=${target_dir:-${CARGO_TARGET_DIR:-$repo/target}}/release

if ((quick)); then
    warmup=0.5s duration=2s
else
    warmup=1s duration=10s
fi

say() { printf '%s\n' "$*" >&2; }
die() { say "proxy.sh: $*"; exit 1; }

for tool in taskset getconf; do
    command -v "$tool" >/dev/null || die "$tool is needed (Debian: util-linux / libc-bin)"
done

# --- CPUs: the proxy alone on one core; the client and the upstream on the others. ----------
# The CPUs this process may use, expanded from Cpus_allowed_list ("0-1", "0,2-3").
cpus=()
IFS=, read -ra ranges <<<"$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)"
for range in "${ranges[@]}"; do
    if [[ $range == *-* ]]; then
        for ((c = ${range%-*}; c <= ${range#*-}; c++)); do cpus+=("$c"); done
    else
        cpus+=("$range")
    fi
done
case ${#cpus[@]} in
    0 | 1) die "needs at least 2 CPUs (the proxy gets one to itself); found ${#cpus[@]}" ;;
    2)
        cpu_client=${cpus[0]} cpu_upstream=${cpus[0]} cpu_proxy=${cpus[1]}
        layout="2 CPUs: proxy on CPU $cpu_proxy; client and upstream SHARE CPU $cpu_client"
        ;;
    *)
        cpu_client=${cpus[0]} cpu_proxy=${cpus[1]} cpu_upstream=${cpus[2]}
        layout="proxy on CPU $cpu_proxy, client on CPU $cpu_client, upstream on CPU $cpu_upstream"
        ;;
esac

# --- nginx: the Debian package, installed when missing. ---------------------------------
find_nginx() {
    command -v nginx 2>/dev/null && return
    [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx && return
    return 0
}
nginx_bin=$(find_nginx)
if [[ -z $nginx_bin ]]; then
    command -v apt-get >/dev/null || die "nginx is missing and there is no apt-get to install it"
    sudo=
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    say "installing nginx with apt-get (nginx-light, else nginx) ..."
    # policy-rc.d (Debian's hook for this) keeps the package from starting its system service
    # on port 80 during the install; it is removed again afterwards.
    (
        made_policy=0
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
            $sudo chmod 755 /usr/sbin/policy-rc.d
            made_policy=1
        fi
        trap '((made_policy)) && $sudo rm -f /usr/sbin/policy-rc.d' EXIT
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light ||
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx
    ) >&2 || die "installing nginx failed"
    nginx_bin=$(find_nginx)
    [[ -n $nginx_bin ]] || die "nginx is still missing after apt-get install"
fi

# --- Release binaries. -----------------------------------------------------------------
if ((build)); then
    say "building release binaries (cargo build --release) ..."
    (cd "$repo" && cargo build --release -p krouter-proxy -p krouter-admin -p krouter-tests --bins) >&2
fi
for b in krouter krouter-admin krouter-demo-upstream krouter-load; do
    [[ -x $bin/$b ]] || die "$bin/$b is missing (run without --no-build)"
done

# --- A temporary directory and cleanup of everything started. -----------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/krouter-bench.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if ((keep)); then say "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until file $1 contains pattern $2 (grep -E), for up to 30 s.
wait_for() {
    local i
    for ((i = 0; i < 300; i++)); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "timed out waiting for /$2/ in $1: $(tail -n 5 "$1" 2>/dev/null)"
}

# A clean environment for krouter and krouter-admin: they refuse unknown KROUTER_* variables.
user=${USER:-bench}
kenv=(env -i "PATH=/usr/bin:/bin" "HOME=$tmp" "USER=$user" "KROUTER_HOME=$tmp/home")

# --- The upstream. -----------------------------------------------------------------------
taskset -c "$cpu_upstream" "$bin/krouter-demo-upstream" --listen 127.0.0.1:0 >"$tmp/upstream.out" 2>&1 &
pids+=($!)
wait_for "$tmp/upstream.out" 'listening on'
uport=$(sed -n 's#.*http://127\.0\.0\.1:\([0-9]*\)/v1.*#\1#p' "$tmp/upstream.out")
[[ -n $uport ]] || die "no upstream port in $(cat "$tmp/upstream.out")"

# --- krouter: a throwaway home, a signed policy, one API key. ---------------------------
"${kenv[@]}" "$bin/krouter-admin" init >"$tmp/init.out" 2>&1 || die "krouter-admin init: $(cat "$tmp/init.out")"
# The metrics listener is set per process below (a --baseline build may not know it).
sed -i '/^metrics_listen/d' "$tmp/home/krouter.toml"
cat >"$tmp/home/policy/policy.toml" <<EOF
serial = 2

[access]
require_api_keys = true

[[access.groups]]
name = "default"
models = ["*"]

[[providers]]
name = "demo"
kind = "openai-compatible"
base_url = "http://127.0.0.1:$uport/v1"

[[routes]]
model = "bench"
targets = ["demo:bench"]

[[routes]]
model = "stream-gap-50"
targets = ["demo:stream-gap-50"]
EOF
"${kenv[@]}" "$bin/krouter-admin" policy sign --key "$tmp/home/secrets/policy-signing.key" \
    "$tmp/home/policy/policy.toml" >"$tmp/sign.out" 2>&1 || die "policy sign: $(cat "$tmp/sign.out")"
"${kenv[@]}" "$bin/krouter-admin" --json keys create --label bench >"$tmp/key.json" 2>"$tmp/key.err" ||
    die "keys create: $(cat "$tmp/key.err")"
api_key=$(sed -n 's/.*"secret": *"\([^"]*\)".*/\1/p' "$tmp/key.json")
[[ -n $api_key ]] || die "no secret in the keys create output"

# One log line per request to a file, as in production; the whole process on the proxy CPU.
"${kenv[@]}" KROUTER_LISTEN=127.0.0.1:0 KROUTER_METRICS_LISTEN=127.0.0.1:0 KROUTER_LOG_FORMAT=json \
    taskset -c "$cpu_proxy" "$bin/krouter" >/dev/null 2>"$tmp/krouter.log" &
kpid=$!
pids+=("$kpid")
wait_for "$tmp/krouter.log" '"message":"listening"'
kaddr=$(grep -m1 '"message":"listening"' "$tmp/krouter.log" | sed -n 's/.*"addr":"\([^"]*\)".*/\1/p')
[[ -n $kaddr ]] || die "no address in krouter's listening line"
maddr=$(grep -m1 '"message":"listening"' "$tmp/krouter.log" | sed -n 's/.*"metrics_addr":"\([^"]*\)".*/\1/p')
[[ $(cat "/proc/$kpid/comm") == krouter ]] || die "pid $kpid is not krouter"

# The baseline krouter (--baseline): a copy of the home (the same settings, policy, store and
# key) with an empty state directory of its own, so a build from before a state schema change
# runs too and krouter's state figures count krouter's rows only; its own port, the same CPU.
# Its runs sit between krouter's and the next target's, so both see the same machine.
if [[ -n $baseline ]]; then
    [[ -x $baseline/krouter ]] || die "--baseline: $baseline/krouter is missing"
    cp -a "$tmp/home" "$tmp/home-baseline"
    find "$tmp/home-baseline/state" -mindepth 1 -delete
    "${kenv[@]}" KROUTER_HOME="$tmp/home-baseline" KROUTER_LISTEN=127.0.0.1:0 KROUTER_LOG_FORMAT=json \
        taskset -c "$cpu_proxy" "$baseline/krouter" >/dev/null 2>"$tmp/baseline.log" &
    bpid=$!
    pids+=("$bpid")
    wait_for "$tmp/baseline.log" '"message":"listening"'
    baddr=$(grep -m1 '"message":"listening"' "$tmp/baseline.log" | sed -n 's/.*"addr":"\([^"]*\)".*/\1/p')
    [[ -n $baddr ]] || die "no address in the baseline's listening line"
fi

# --- nginx: foreground, one worker, everything under $tmp/nginx. ---------------------------
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
mkdir -p "$tmp/nginx"
npid= nport=
for ((attempt = 0; attempt < 10; attempt++)); do
    nport=$((20000 + RANDOM % 40000))
    port_in_use "$nport" && continue
    cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    # One line per request to a file, like krouter's JSON log line.
    access_log $tmp/nginx/access.log;
    client_body_temp_path $tmp/nginx/client_body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream mock {
        server 127.0.0.1:$uport;
        # Idle upstream connections kept per worker: above the 256 concurrent requests, so
        # that nginx, like krouter's pool, never closes and reopens upstream connections.
        keepalive 512;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$nport;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
    taskset -c "$cpu_proxy" "$nginx_bin" -p "$tmp/nginx/" -c "$tmp/nginx/nginx.conf" \
        -e "$tmp/nginx/error.log" >"$tmp/nginx/stdout" 2>&1 &
    npid=$!
    for ((i = 0; i < 100; i++)); do
        port_in_use "$nport" && break
        kill -0 "$npid" 2>/dev/null || break
        sleep 0.05
    done
    if port_in_use "$nport" && kill -0 "$npid" 2>/dev/null; then
        pids+=("$npid")
        break
    fi
    kill "$npid" 2>/dev/null || true
    wait "$npid" 2>/dev/null || true
    npid=
done
[[ -n $npid ]] || die "nginx did not start: $(tail -n 5 "$tmp/nginx/error.log" "$tmp/nginx/stdout" 2>/dev/null)"
# The worker: the master's child.
nworker=
for ((i = 0; i < 100 && ${#nworker} == 0; i++)); do
    for status in /proc/[0-9]*/status; do
        if [[ $(sed -n 's/^PPid:[[:space:]]*//p' "$status" 2>/dev/null) == "$npid" ]]; then
            nworker=$(basename "$(dirname "$status")")
            break
        fi
    done
    [[ -n $nworker ]] || sleep 0.05
done
[[ -n $nworker ]] || die "no nginx worker process"

# --- Measuring helpers. ------------------------------------------------------------------
ticks=$(getconf CLK_TCK)
# "utime stime" (clock ticks) of the processes $@, all threads.
cpu_split() {
    local user=0 sys=0 pid stat
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        stat=${stat##*) }
        read -ra f <<<"$stat"
        user=$((user + f[11])) sys=$((sys + f[12]))
    done
    echo "$user $sys"
}
# "name ticks" for every thread of process $1.
thread_ticks() {
    local task stat name
    for task in /proc/"$1"/task/*; do
        stat=$(<"$task/stat") || continue
        name=${stat#*\(}
        name=${name%%\)*}
        stat=${stat##*) }
        read -ra f <<<"$stat"
        echo "${name// /_} $((f[11] + f[12]))"
    done
}
# VmRSS or VmHWM ($2) of process $1, KiB.
mem_kib() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
# The number after "key": in a flat JSON line.
field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# The requests/s of target $1's run $2.
get_rps() { field "${R[$1.$2]}" rps; }

declare -A url proc R
url[direct]=http://127.0.0.1:$uport
url[nginx]=http://127.0.0.1:$nport
url[krouter]=http://$kaddr
proc[direct]= proc[nginx]="$npid $nworker" proc[krouter]=$kpid
targets=(direct nginx krouter)
if [[ -n $baseline ]]; then
    url[baseline]=http://$baddr proc[baseline]=$bpid
    targets+=(baseline)
fi

body_json='{"model":"bench","messages":[{"role":"user","content":"Say hello."}]}'
body_stream='{"model":"bench","stream":true,"messages":[{"role":"user","content":"Say hello."}]}'
body_gap='{"model":"stream-gap-50","stream":true,"messages":[{"role":"user","content":"Say hello."}]}'

# load TARGET TEST [krouter-load options...]: one run; records its JSON, and the proxy's CPU
# time per completed request (warm-up included) when there is a proxy.
load() {
    local target=$1 test=$2 user0 sys0 user1 sys1 out threads_before t0 t1
    shift 2
    # shellcheck disable=SC2086 # proc[] holds a list of pids
    [[ -z ${proc[$target]} ]] || read -r user0 sys0 <<<"$(cpu_split ${proc[$target]})"
    [[ $target != krouter ]] || threads_before=$(thread_ticks "$kpid")
    t0=$(date +%s%N)
    out=$(taskset -c "$cpu_client" "$bin/krouter-load" --url "${url[$target]}/v1/chat/completions" \
        --header "authorization: Bearer $api_key" "$@") || die "$target $test: krouter-load failed: $out"
    t1=$(date +%s%N)
    if [[ -n ${proc[$target]} ]]; then
        # shellcheck disable=SC2086
        read -r user1 sys1 <<<"$(cpu_split ${proc[$target]})"
        local n user=$((user1 - user0)) sys=$((sys1 - sys0))
        local t=$((user + sys))
        n=$(field "$out" total_requests)
        R[$target.$test.cpu]=$(awk -v t="$t" -v hz="$ticks" -v n="$n" \
            'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "n/a" }')
        # The same split into user and kernel (system) time: "user/system".
        R[$target.$test.split]=$(awk -v u="$user" -v s="$sys" -v hz="$ticks" -v n="$n" \
            'BEGIN { if (n > 0) printf "%.1f/%.1f", u * 1e6 / hz / n, s * 1e6 / hz / n; else print "n/a" }')
        # How busy the proxy's CPU was: near 100 % means the proxy was the bottleneck.
        R[$target.$test.busy]=$(awk -v t="$t" -v hz="$ticks" -v ns=$((t1 - t0)) \
            'BEGIN { printf "%d", t / hz / (ns / 1e9) * 100 }')
        if [[ $target == krouter ]]; then
            # CPU per request by thread name (threads that ended during the run are missing).
            R[krouter.$test.threads]=$(awk -v hz="$ticks" -v n="$n" '
                NR == FNR { before[$1] += $2; next }
                { after[$1] += $2 }
                END { for (k in after) if (n > 0 && after[k] > before[k])
                    printf "%s %.1f, ", k, (after[k] - before[k]) * 1e6 / hz / n }' \
                <(echo "$threads_before") <(thread_ticks "$kpid") | sed 's/, $//')
        fi
    fi
    printf '{"target":"%s","test":"%s","result":%s}\n' "$target" "$test" "$out" >>"$tmp/results.jsonl"
    R[$target.$test]=$out
    local errors
    errors=$(field "$out" errors)
    total_errors=$((total_errors + ${errors:-0}))
    # Every request through krouter is one metadata row in its state database.
    if [[ $target == krouter ]]; then
        rows_sent=$((rows_sent + $(field "$out" total_requests)))
    fi
    if [[ ${errors:-0} != 0 ]]; then
        say "  warning: $target $test: $errors errors; first: $(sed -n 's/.*"first_error":"\([^"]*\)".*/\1/p' <<<"$out")"
    fi
    say "  $target $test: $out"
}

# --- Idle memory, a check that every path answers, then the runs. --------------------------
R[krouter.idle]=$(mem_kib "$kpid" VmRSS)
[[ -z $baseline ]] || R[baseline.idle]=$(mem_kib "$bpid" VmRSS)
R[nginx.idle]=$(mem_kib "$nworker" VmRSS)
R[nginx.master]=$(mem_kib "$npid" VmRSS)
for t in "${targets[@]}"; do
    out=$(taskset -c "$cpu_client" "$bin/krouter-load" --url "${url[$t]}/v1/chat/completions" \
        --header "authorization: Bearer $api_key" --body "$body_json" --warmup 0 --duration 0.2s) ||
        die "$t does not answer: $out"
    [[ $(field "$out" errors) == 0 ]] || die "$t answers with errors: $out"
done

total_errors=0 rows_sent=0
# The state database (and its WAL) before the runs, bytes.
state_bytes() { cat "$tmp/home/state/state.sqlite" "$tmp/home/state/state.sqlite-wal" 2>/dev/null | wc -c; }
state_before=$(state_bytes)
started=$(date +%s)
common=(--warmup "$warmup" --duration "$duration")
say "runs of $warmup warm-up + $duration each; $layout"
for t in "${targets[@]}"; do load "$t" c1 "${common[@]}" --connections 1 --body "$body_json"; done
for t in "${targets[@]}"; do load "$t" sse "${common[@]}" --connections 1 --sse --body "$body_stream"; done
for t in "${targets[@]}"; do load "$t" gap "${common[@]}" --connections 8 --sse --body "$body_gap"; done
for t in "${targets[@]}"; do load "$t" c32 "${common[@]}" --connections 32 --body "$body_json"; done
for t in "${targets[@]}"; do load "$t" c256 "${common[@]}" --connections 256 --body "$body_json"; done
R[krouter.peak]=$(mem_kib "$kpid" VmHWM)
[[ -z $baseline ]] || R[baseline.peak]=$(mem_kib "$bpid" VmHWM)
R[nginx.peak]=$(mem_kib "$nworker" VmHWM)
# Paired rounds (--pairs): every proxy back to back per round, so each round's ratio compares
# runs seconds apart.
paired=(nginx krouter)
[[ -z $baseline ]] || paired+=(baseline)
for ((i = 1; i <= pairs; i++)); do
    for c in 32 256; do
        for t in "${paired[@]}"; do
            load "$t" "p$i.c$c" --warmup 0.5s --duration 4s --connections "$c" --body "$body_json"
        done
    done
done
# Equal-rate rounds (--pairs): nginx and krouter paced at the same request rate, half the
# slower one's closed-loop rate at that connection count, so neither is the bottleneck. A
# proxy that is (closed loop) leaves the client's and upstream's CPU idle between its answers
# and pays to wake them for each one, which the faster proxy does not: at the same pace both
# pay alike, and CPU per request compares their work.
declare -A rate
for c in 32 256; do
    rate[$c]=$(awk -v a="$(get_rps nginx "c$c")" -v b="$(get_rps krouter "c$c")" \
        'BEGIN { m = (a < b) ? a : b; printf "%d", (m > 2) ? m / 2 : 1 }')
done
for ((i = 1; i <= pairs; i++)); do
    for c in 32 256; do
        for t in nginx krouter; do
            load "$t" "r$i.c$c" --warmup 0.5s --duration 4s --connections "$c" --rate "${rate[$c]}" --body "$body_json"
        done
    done
done
elapsed=$(($(date +%s) - started))
# The writer batches every 50 ms; give it a moment, then read what it dropped.
sleep 1
state_after=$(state_bytes)
dropped=unknown
if [[ -n $maddr ]] && command -v curl >/dev/null; then
    dropped=$(curl -s "http://$maddr/metrics" | sed -n 's/^krouter_metadata_rows_dropped_total \([0-9]*\).*/\1/p')
fi
klines=$(wc -l <"$tmp/krouter.log")
nlines=$(wc -l <"$tmp/nginx/access.log")

# --- The report. -----------------------------------------------------------------------
us() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else printf "%d", v }'; }
ms() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else printf "%.2f", v / 1000 }'; }
# Proxy figure minus the direct one, in µs.
added() { awk -v p="$(field "${R[$1.$3]}" "$4")" -v d="$(field "${R[direct.$3]}" "$4")" -v scale="$2" \
    'BEGIN { printf (scale == "ms" ? "%.2f" : "%d"), (p - d) / (scale == "ms" ? 1000 : 1) }'; }
row() { printf '%-44s %12s %12s %12s\n' "$@"; }
get() { field "${R[$1.$2]}" "$3"; }

cpu_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
nginx_version=$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')
krouter_version=$(cd "$repo" && git describe --always --dirty 2>/dev/null || echo unknown)
echo
echo "krouter proxy benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(uname -m), nproc $(nproc), ${cpu_model:-unknown CPU}, $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); kernel $(uname -r)"
echo "krouter $krouter_version (release), $nginx_version, HTTP/1.1 keep-alive over 127.0.0.1"
echo "layout: $layout"
echo "runs: $warmup warm-up + $duration measured each$( ((quick)) && echo ' (--quick: rough figures)'); took ${elapsed}s"
echo
row "" direct nginx krouter
row "p50 latency, 1 connection (µs)" "$(us "$(get direct c1 p50_us)")" "$(us "$(get nginx c1 p50_us)")" "$(us "$(get krouter c1 p50_us)")"
row "  added p50 latency (µs)" - "$(added nginx us c1 p50_us)" "$(added krouter us c1 p50_us)"
row "p99 latency, 1 connection (µs)" "$(us "$(get direct c1 p99_us)")" "$(us "$(get nginx c1 p99_us)")" "$(us "$(get krouter c1 p99_us)")"
row "requests/s, 1 connection" "$(get direct c1 rps)" "$(get nginx c1 rps)" "$(get krouter c1 rps)"
row "requests/s, 32 connections" "$(get direct c32 rps)" "$(get nginx c32 rps)" "$(get krouter c32 rps)"
row "requests/s, 256 connections" "$(get direct c256 rps)" "$(get nginx c256 rps)" "$(get krouter c256 rps)"
row "p99 latency, 256 connections (ms)" "$(ms "$(get direct c256 p99_us)")" "$(ms "$(get nginx c256 p99_us)")" "$(ms "$(get krouter c256 p99_us)")"
row "proxy CPU per request, 1 conn (µs)" - "${R[nginx.c1.cpu]}" "${R[krouter.c1.cpu]}"
row "proxy CPU per request, 32 conns (µs)" - "${R[nginx.c32.cpu]}" "${R[krouter.c32.cpu]}"
row "proxy CPU per request, 256 conns (µs)" - "${R[nginx.c256.cpu]}" "${R[krouter.c256.cpu]}"
row "  user/system, 32 conns (µs)" - "${R[nginx.c32.split]}" "${R[krouter.c32.split]}"
row "  user/system, 256 conns (µs)" - "${R[nginx.c256.split]}" "${R[krouter.c256.split]}"
row "proxy CPU busy, 32 conns (%)" - "${R[nginx.c32.busy]}" "${R[krouter.c32.busy]}"
row "proxy CPU busy, 256 conns (%)" - "${R[nginx.c256.busy]}" "${R[krouter.c256.busy]}"
row "time to first content event p50 (µs)" "$(us "$(get direct sse ttfe_p50_us)")" "$(us "$(get nginx sse ttfe_p50_us)")" "$(us "$(get krouter sse ttfe_p50_us)")"
row "  added time to first content (µs)" - "$(added nginx us sse ttfe_p50_us)" "$(added krouter us sse ttfe_p50_us)"
row "whole SSE stream p50 (µs)" "$(us "$(get direct sse p50_us)")" "$(us "$(get nginx sse p50_us)")" "$(us "$(get krouter sse p50_us)")"
row "stream-gap-50: first content p50 (ms)" "$(ms "$(get direct gap ttfe_p50_us)")" "$(ms "$(get nginx gap ttfe_p50_us)")" "$(ms "$(get krouter gap ttfe_p50_us)")"
row "stream-gap-50: whole stream p50 (ms)" "$(ms "$(get direct gap p50_us)")" "$(ms "$(get nginx gap p50_us)")" "$(ms "$(get krouter gap p50_us)")"
row "  added to the whole stream (ms)" - "$(added nginx ms gap p50_us)" "$(added krouter ms gap p50_us)"
row "idle RSS (MiB)" - "$(mib "${R[nginx.idle]}")" "$(mib "${R[krouter.idle]}")"
row "peak RSS after 256 connections (MiB)" - "$(mib "${R[nginx.peak]}")" "$(mib "${R[krouter.peak]}")"
echo
echo "nginx: worker process figures (its master adds $(mib "${R[nginx.master]}") MiB RSS and ~0 CPU; CPU includes both)."
echo "krouter CPU µs per request by thread: 32 conns: ${R[krouter.c32.threads]:-?}; 256 conns: ${R[krouter.c256.threads]:-?}"
echo "note: proxy CPU busy well under 100 % means that proxy was not the bottleneck (the client and upstream CPU was); compare CPU per request then, not requests/s."
echo "per-request log lines: krouter $klines (JSON to a file), nginx $nlines (access_log to a file); errors in all runs: $total_errors"
if [[ -n $baseline ]]; then
    echo
    echo "baseline $baseline/krouter, run in the same rounds (krouter / baseline):"
    for c in c1 c32 c256; do
        echo "  CPU per request, ${c#c} connections: ${R[krouter.$c.cpu]} / ${R[baseline.$c.cpu]} µs = $(awk -v k="${R[krouter.$c.cpu]}" -v b="${R[baseline.$c.cpu]}" 'BEGIN { if (b > 0) printf "%+.1f %%", (k / b - 1) * 100; else print "n/a" }')"
    done
    echo "  added p50 latency, 1 connection: $(added krouter us c1 p50_us) / $(added baseline us c1 p50_us) µs"
    echo "  peak RSS after 256 connections: $(mib "${R[krouter.peak]}") / $(mib "${R[baseline.peak]}") MiB"
fi

# ratios A B C [KIND]: each paired round's (KIND p, the default) or equal-rate round's (r)
# CPU per request of A over B at C connections, then their median.
ratios() {
    local i list=() kind=${4:-p}
    for ((i = 1; i <= pairs; i++)); do
        list+=("$(awk -v a="${R[$1.$kind$i.c$3.cpu]}" -v b="${R[$2.$kind$i.c$3.cpu]}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }')")
    done
    printf '%s ' "${list[@]}"
    printf '%s\n' "${list[@]}" | grep -v n/a | sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "median %.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
if ((pairs > 0)); then
    echo
    echo "paired rounds ($pairs, 0.5 s warm-up + 4 s each), CPU per request ratios per round:"
    for c in 32 256; do
        echo "  krouter / nginx, $c connections: $(ratios krouter nginx "$c")"
        [[ -z $baseline ]] || echo "  krouter / baseline, $c connections: $(ratios krouter baseline "$c")"
    done
    echo
    echo "equal-rate rounds ($pairs, 0.5 s warm-up + 4 s each, both proxies paced at one rate), CPU per request ratios per round:"
    for c in 32 256; do
        echo "  krouter / nginx, $c connections at ${rate[$c]} requests/s: $(ratios krouter nginx "$c" r)"
        echo "    CPU busy nginx / krouter (%): $(for ((i = 1; i <= pairs; i++)); do printf '%s/%s ' "${R[nginx.r$i.c$c.busy]}" "${R[krouter.r$i.c$c.busy]}"; done)"
    done
fi

echo
echo "metadata writer: $rows_sent requests through krouter, one row each; rows dropped by krouter: ${dropped:-unknown}"
echo "state.sqlite (+ WAL) grew $(awk -v a="$state_after" -v b="$state_before" 'BEGIN { printf "%.1f", (a - b) / 1048576 }') MiB: $(awk -v a="$state_after" -v b="$state_before" -v n="$rows_sent" 'BEGIN { if (n > 0) printf "%.0f", (a - b) / 1048576 / n * 1e6; else print "n/a" }') MiB per million requests"

# --- Targets. ------------------------------------------------------------------------------
verdict() { if [[ $1 == 1 ]]; then echo PASS; else echo MISS; fi; }
echo
echo "targets"
for c in c32 c256; do
    ratio=$(awk -v k="${R[krouter.$c.cpu]}" -v n="${R[nginx.$c.cpu]}" 'BEGIN { if (n > 0) printf "%.2f", k / n; else print "n/a" }')
    # With paired rounds, their median is the steadier figure.
    if ((pairs > 0)); then
        ratio=$(ratios krouter nginx "${c#c}" | sed -n 's/.*median \([0-9.]*\).*/\1/p')
        ratio=$(awk -v r="$ratio" 'BEGIN { if (r == "") print "n/a"; else printf "%.2f", r }')
    fi
    ok=$(awk -v r="$ratio" 'BEGIN { print (r != "n/a" && r <= 1.5) ? 1 : 0 }')
    printf '  %-62s %s\n' "CPU per request, krouter / nginx, ${c#c} connections: ${ratio}x (<= 1.5x)" "$(verdict "$ok")"
done
peak=$(mib "${R[krouter.peak]}")
ok=$(awk -v p="$peak" 'BEGIN { print (p < 30) ? 1 : 0 }')
printf '  %-62s %s\n' "krouter peak RSS at 256 connections: $peak MiB (< 30 MiB)" "$(verdict "$ok")"
# A 40 ms floor (Nagle's algorithm meeting delayed ACKs) adds ~40 ms per event; anything near
# it fails. The threshold is 20 ms, half the floor: a proxy on loopback adds well under 1 ms.
a1=$(added krouter ms sse ttfe_p50_us)
a2=$(added krouter ms gap ttfe_p50_us)
a3=$(added krouter ms gap p50_us)
ok=$(awk -v a="$a1" -v b="$a2" -v c="$a3" 'BEGIN { print (a < 20 && b < 20 && c < 20) ? 1 : 0 }')
printf '  %-62s %s\n' "no 40 ms streaming floor: added first event ${a1} / ${a2} ms, gap-50 stream ${a3} ms (< 20 ms)" "$(verdict "$ok")"
ok=$([[ $dropped == 0 ]] && echo 1 || echo 0)
printf '  %-62s %s\n' "metadata writer keeps up: $dropped rows dropped (0)" "$(verdict "$ok")"
exit 0
}
