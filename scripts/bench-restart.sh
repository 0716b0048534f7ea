#!/usr/bin/env bash
# Restarts under load, side by side: the reference server (cmd/server) and
# a baseline written the way tableflip's README does it (scripts/baseline:
# SIGHUP -> Upgrade, then a plain http.Server.Shutdown). Both get the same
# load and the same SIGHUP schedule, in the same run, and it prints one
# table with a row per server and protocol.
#
# Usage: scripts/bench-restart.sh [-d SECONDS] [-i SECONDS] [-w SECONDS] [-k]
#   -d  load duration of each run (default 30, env BENCH_DURATION)
#   -i  SIGHUP interval (default 2, env BENCH_INTERVAL)
#   -w  latency window after each SIGHUP (default 2, env BENCH_WINDOW)
#   -k  keep the work directory (binaries, server logs, per-request logs)
# Load shape (env only): BENCH_WRK_CONNS (32), BENCH_H2_CLIENTS (16),
# BENCH_H2_STREAMS (10), BENCH_H2_REQS (1000 requests per h2load run).
# It needs wrk 4.x (with LuaJIT) and h2load from nghttp2 1.5x/1.6x, and
# installs them with apt-get when missing (as root). It takes about
# 4 x (duration + 3) seconds plus the build.
#
# What runs, for each server (ours first), each run on a fresh server:
#   HTTP/1.1: wrk, keep-alive, one connection per thread (-t = -c), with
#     scripts/bench-restart.lua logging every request's start, status and
#     latency. wrk does not retry: every socket error counts.
#   HTTP/2 (h2c, prior knowledge): BENCH_H2_CLIENTS lanes, each running
#     h2load -c1 -mBENCH_H2_STREAMS -nBENCH_H2_REQS --log-file again and
#     again until the duration is up. h2load (1.52 as tested) does not
#     reconnect after GOAWAY: a single h2load --duration run goes silent at
#     the first restart, so each lane starts a new h2load when the last one
#     ends.
#     h2load retries nothing, so every stream that ends without an answer
#     counts.
# The two protocols run one after the other, each with its own SIGHUP
# schedule, so the load tools never share the 2 cores with each other.
# During a run, SIGHUP goes to the pid in the PID file (re-read each time)
# every interval, starting one interval in, as long as a whole window
# still fits in the run. After each SIGHUP a curl on a new connection polls
# GET / every 10 ms until another pid answers: that is the restart time.
#
# Every process it starts (servers and every generation they spawn, load
# tools, pollers) is stopped by pid on exit; traffic goes only to 127.0.0.1.
# It exits non-zero only when it cannot measure (build, tools, a server
# that does not start); errors under load are the findings, not failures.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME with a '.', and sort/awk on plain numbers

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

duration=${BENCH_DURATION:-30}
interval=${BENCH_INTERVAL:-2}
window=${BENCH_WINDOW:-2}
wrk_conns=${BENCH_WRK_CONNS:-32}
h2_clients=${BENCH_H2_CLIENTS:-16}
h2_streams=${BENCH_H2_STREAMS:-10}
h2_reqs=${BENCH_H2_REQS:-1000}
keep=0
cmdline="$0${*:+ $*}"
while getopts "d:i:w:kh" opt; do
	case $opt in
	d) duration=$OPTARG ;;
	i) interval=$OPTARG ;;
	w) window=$OPTARG ;;
	k) keep=1 ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
(($# == 0)) || usage

die() {
	echo "bench-restart: $*" >&2
	exit 1
}

whole() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a whole number of at least 1, not '$2'"; }
whole "-d (BENCH_DURATION)" "$duration"
whole BENCH_WRK_CONNS "$wrk_conns"
whole BENCH_H2_CLIENTS "$h2_clients"
whole BENCH_H2_STREAMS "$h2_streams"
whole BENCH_H2_REQS "$h2_reqs"
# usec converts seconds (whole or with up to 6 decimals) to microseconds.
usec() {
	[[ $2 =~ ^([0-9]+)(\.([0-9]{1,6}))?$ ]] || die "$1 must be seconds, like 2 or 0.5, not '$2'"
	local frac=${BASH_REMATCH[3]}000000
	echo $((10#${BASH_REMATCH[1]} * 1000000 + 10#${frac:0:6}))
}
interval_us=$(usec "-i (BENCH_INTERVAL)" "$interval")
window_us=$(usec "-w (BENCH_WINDOW)" "$window")
duration_us=$((duration * 1000000))
((interval_us >= 200000)) || die "-i must be at least 0.2 seconds"
((window_us > 0)) || die "-w must be more than 0"
# SIGHUPs at interval, 2*interval, ... while the window after one fits.
restarts=$(((duration_us - window_us) / interval_us))
((restarts >= 1)) || die "-d $duration leaves no room for a SIGHUP every ${interval}s with a ${window}s window"
((BASH_VERSINFO[0] >= 5)) || die "bash 5 or later is needed (EPOCHREALTIME)"

cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-restart.XXXXXX")

# kill_tree stops a process and its descendants, by pid, children first.
kill_tree() {
	local pid=$1 depth=${2:-0} child
	((depth < 8)) || return 0
	for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
		kill_tree "$child" $((depth + 1))
	done
	kill -TERM "$pid" 2>/dev/null || true
}

# server_pids lists the running processes of the binaries built into
# $work: every generation of both servers, whoever its parent is now.
server_pids() {
	# find fails on processes that exit while it reads /proc: not an error.
	{ find /proc -mindepth 2 -maxdepth 2 -name exe -lname "$work/bin/*" 2>/dev/null || true; } |
		awk -F/ '{ print $3 }'
}

# stop_servers sends SIGTERM to every generation, waits up to 15 s for the
# drains, then SIGKILLs what is left. It prints how many needed SIGKILL.
stop_servers() {
	local pids pid i killed=0
	pids=$(server_pids)
	[[ -z $pids ]] && { echo 0; return; }
	for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
	for ((i = 0; i < 150; i++)); do
		[[ -z $(server_pids) ]] && { echo 0; return; }
		sleep 0.1
	done
	for pid in $(server_pids); do
		kill -KILL "$pid" 2>/dev/null && killed=$((killed + 1))
	done
	echo "$killed"
}

cleanup() {
	local pid
	trap - EXIT INT TERM
	set +e # clean up all that can be, whatever fails
	# Background jobs still running: the SIGHUP loop, load tools, lanes.
	for pid in $(jobs -p); do kill_tree "$pid"; done
	stop_servers >/dev/null
	if ((keep)); then
		echo "work directory kept: $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }

sleep_until() {
	local d=$(($1 - $(now_us)))
	((d > 0)) && sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"
	return 0
}

# --- tools ---------------------------------------------------------------

if ! command -v wrk >/dev/null || ! command -v h2load >/dev/null; then
	if ! command -v apt-get >/dev/null || ((EUID != 0)); then
		die "wrk and h2load are missing: install wrk and nghttp2-client"
	fi
	echo "installing wrk and nghttp2-client with apt-get" >&2
	{ apt-get update && apt-get install -y wrk nghttp2-client; } >"$work/apt.log" 2>&1 ||
		die "apt-get install wrk nghttp2-client failed: see $work/apt.log (-k keeps it)"
fi
for tool in curl ps; do command -v "$tool" >/dev/null || die "$tool is needed"; done
wrk_version=$(wrk -v 2>&1 | head -n 1 || true)
[[ $wrk_version =~ ^wrk\ [^\ ]*4\.[0-9]+ ]] ||
	die "wrk 4.x is needed (its Lua hooks), found: ${wrk_version:-nothing}"
h2load_version=$(h2load --version 2>&1 | head -n 1 || true)
[[ $h2load_version =~ nghttp2/1\.([5-6][0-9])\. ]] ||
	die "h2load from nghttp2 1.5x or 1.6x is needed (its --log-file and summary), found: ${h2load_version:-nothing}"

# --- build ---------------------------------------------------------------

mkdir -p "$work/bin"
go build -o "$work/bin/handoff" -ldflags "-X main.version=bench" ./cmd/server ||
	die "go build ./cmd/server failed"
go build -o "$work/bin/baseline" ./scripts/baseline || die "go build ./scripts/baseline failed"

# --- one run -------------------------------------------------------------

# free_port prints a 127.0.0.1 port that no socket uses now.
free_port() {
	local i port hex
	for ((i = 0; i < 50; i++)); do
		port=$((20000 + RANDOM % 40000))
		printf -v hex ':%04X ' "$port"
		grep -qs "$hex" /proc/net/tcp /proc/net/tcp6 || { echo "$port"; return; }
	done
	die "no free port found in 50 tries"
}

# get_pid prints the pid in the body of GET / on a new connection, or
# nothing if there is no answer.
get_pid() {
	local body
	body=$(curl -s --max-time 1 "http://$1/" 2>/dev/null) || return 0
	[[ $body =~ \"pid\":([0-9]+) ]] && echo "${BASH_REMATCH[1]}"
	return 0
}

# start_server NAME DIR: starts the first generation on a free port with a
# PID file in DIR and waits until it answers; sets addr.
start_server() {
	local name=$1 dir=$2 pid i args
	addr=127.0.0.1:$(free_port)
	args=(-addr "$addr" -pid-file "$dir/pid")
	[[ $name == handoff ]] && args+=(-log-format json)
	# Every generation inherits stdout and stderr: none may hold our stdout.
	(cd "$dir" && exec "$work/bin/$name" "${args[@]}") >"$dir/server.log" 2>&1 &
	pid=$!
	for ((i = 0; i < 100; i++)); do
		[[ $(get_pid "$addr") == "$pid" ]] && return 0
		kill -0 "$pid" 2>/dev/null || die "$name exited at start: $(tail -n 5 "$dir/server.log")"
		sleep 0.05
	done
	die "$name did not answer on $addr within 5s"
}

# hup_loop START DIR: the SIGHUP schedule of one run. Each line of
# DIR/restarts is: <SIGHUP time, µs> <old pid> <new pid or -> <restart ms or ->.
hup_loop() {
	local start=$1 dir=$2 k old t0 t1 next pid new polls
	for ((k = 1; k <= restarts; k++)); do
		sleep_until $((start + k * interval_us))
		old=$(cat "$dir/pid" 2>/dev/null || true)
		[[ $old =~ ^[0-9]+$ ]] || { echo "$(now_us) ? - -" >>"$dir/restarts"; continue; }
		t0=$(now_us)
		kill -HUP "$old" 2>/dev/null || { echo "$t0 $old - -" >>"$dir/restarts"; continue; }
		next=$((start + (k + 1) * interval_us))
		new=-
		for ((polls = 0; polls < 1000; polls++)); do
			pid=$(get_pid "$addr")
			t1=$(now_us)
			if [[ -n $pid && $pid != "$old" ]]; then
				new=$pid
				break
			fi
			((t1 < next)) || break
			sleep 0.01
		done
		if [[ $new == - ]]; then
			echo "$t0 $old - -" >>"$dir/restarts"
		else
			echo "$t0 $old $new $(((t1 - t0) / 1000))" >>"$dir/restarts"
		fi
	done
}

# h2_lane DIR N END: one HTTP/2 client, run again and again until END.
h2_lane() {
	local dir=$1 n=$2 end=$3 i out now left
	for ((i = 0; i < 10000; i++)); do
		now=$(now_us)
		((now < end)) || break
		left=$(((end - now + 999999) / 1000000))
		out="$dir/h2-$n-$i"
		# -N bounds a stalled connection; timeout bounds the whole run.
		timeout --foreground -k 2 $((left + 15)) \
			h2load -c1 -m"$h2_streams" -n"$h2_reqs" -N 5s --log-file="$out.log" \
			"http://$addr/" >"$out.out" 2>&1 || echo "exit $?" >>"$out.out"
		# A refused connection ends at once: do not spin on it.
		grep -q ' 0 started' "$out.out" && sleep 0.05
	done
	return 0
}

# run NAME PROTO: one fresh server, one load, one SIGHUP schedule.
run() {
	local name=$1 proto=$2 dir="$work/$1-$2" start hup lane i pids
	mkdir -p "$dir"
	: >"$dir/restarts"
	start_server "$name" "$dir"
	echo "$name $proto: $addr, ${duration}s" >&2
	start=$(now_us)
	hup_loop "$start" "$dir" &
	hup=$!
	if [[ $proto == h1 ]]; then
		BENCH_WRK_LOG_DIR=$dir wrk -t"$wrk_conns" -c"$wrk_conns" -d"${duration}s" --timeout 5s --latency \
			-s "$repo/scripts/bench-restart.lua" "http://$addr/" >"$dir/wrk.out" 2>&1 &
		wait "$!" || die "wrk failed: $(tail -n 5 "$dir/wrk.out")"
	else
		pids=()
		for ((lane = 0; lane < h2_clients; lane++)); do
			h2_lane "$dir" "$lane" $((start + duration_us)) &
			pids+=("$!")
		done
		for i in "${pids[@]}"; do wait "$i"; done
	fi
	wait "$hup"
	stop_servers >"$dir/sigkilled"
}

# --- analysis ------------------------------------------------------------

# pct FILE: p50 p99 max (ms) of a file of latencies in µs, one a line.
pct() {
	local n
	sort -n -o "$1" "$1"
	n=$(wc -l <"$1")
	((n > 0)) || { echo "- - -"; return; }
	awk -v n="$n" 'BEGIN { a = int((n * 50 + 99) / 100); b = int((n * 99 + 99) / 100) }
		NR == a { p50 = $1 } NR == b { p99 = $1 }
		END { printf "%.2f %.2f %.2f\n", p50 / 1000, p99 / 1000, $1 / 1000 }' "$1"
}

# scan DIR LOG...: reads per-request logs (start µs, status, latency µs).
# Writes DIR/lat and DIR/lat_win (latencies of answered requests, all and
# within the window after a SIGHUP) and DIR/err_ms (for each request sent
# but never answered: when it was sent, in ms from the nearest SIGHUP);
# prints: answered non2xx unanswered unsent.
scan() {
	local dir=$1
	shift
	awk -v win="$window_us" -v dir="$dir" '
		FILENAME == ARGV[1] { if ($1 ~ /^[0-9]+$/) r[++nr] = $1 + 0; next }
		function last(t,   lo, hi, mid) { # index of the last SIGHUP at or before t
			lo = 0; hi = nr
			while (lo < hi) { mid = int((lo + hi + 1) / 2); if (r[mid] <= t) lo = mid; else hi = mid - 1 }
			return lo
		}
		{
			t = $1 + 0; st = $2 + 0; lat = $3 + 0
			if (st > 0) {
				ok++
				if (st < 200 || st > 399) non2xx++
				print lat > (dir "/lat")
				i = last(t)
				if (i > 0 && t - r[i] < win) print lat > (dir "/lat_win")
			} else if (t == 0) {
				unsent++ # h2load: queued when GOAWAY came, never sent
			} else {
				lost++
				i = last(t) # then the nearest SIGHUP, before or after
				if (i == 0 || (i < nr && r[i + 1] - t < t - r[i])) i++
				if (nr > 0) printf "%.0f\n", (t - r[i]) / 1000 > (dir "/err_ms")
			}
		}
		END { printf "%d %d %d %d\n", ok, non2xx, lost, unsent }
	' "$dir/restarts" "$@"
	touch "$dir/lat" "$dir/lat_win" "$dir/err_ms"
}

# restart_stats DIR: "<answered>/<sent> <median ms>".
restart_stats() {
	local sent ok med
	sent=$(wc -l <"$1/restarts")
	ok=$(awk '$4 != "-"' "$1/restarts" | wc -l)
	med=$(awk '$4 != "-" { print $4 }' "$1/restarts" | sort -n |
		awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
	echo "$ok/$sent $med"
}

# kinds "k=v ...": the non-zero kinds as "total(k=v,...)", or "0".
kinds() {
	local kv total=0 list=""
	for kv in $1; do
		((${kv#*=} > 0)) || continue
		total=$((total + ${kv#*=}))
		list+="${list:+,}$kv"
	done
	if ((total > 0)); then echo "$total($list)"; else echo 0; fi
}

rows=() notes=()
err_note() { # ROW DIR: where the unanswered requests fell
	local n
	n=$(wc -l <"$2/err_ms")
	((n > 0)) || return 0
	notes+=("$1: $n sent requests got no answer; sent at ms from the nearest SIGHUP: $(sort -n "$2/err_ms" |
		awk '{ v[NR] = $1 } END { printf "min %d, median %d, max %d", v[1], v[int((NR + 1) / 2)], v[NR] }')")
}

analyze_h1() {
	local name=$1 dir="$work/$1-h1" out reqs connect rd wr timeout non2xx ok lnon2xx lost unsent lat win rs err
	out="$dir/wrk.out"
	reqs=$(awk '/ requests in / { print $1 }' "$out")
	[[ $reqs =~ ^[0-9]+$ ]] || die "cannot read the request count in $out"
	# "  Socket errors: connect 0, read 24, write 0, timeout 0", only if any
	read -r connect rd wr timeout <<<"$(awk '/Socket errors:/ { gsub(/,/, ""); for (i = 1; i < NF; i++) v[$i] = $(i + 1) }
		END { printf "%d %d %d %d\n", v["connect"], v["read"], v["write"], v["timeout"] }' "$out")"
	non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
	non2xx=${non2xx:-0}
	read -r ok lnon2xx lost unsent <<<"$(scan "$dir" "$dir"/wrk-*.log)"
	lat=$(pct "$dir/lat")
	win=$(pct "$dir/lat_win")
	rs=$(restart_stats "$dir")
	err=$((connect + rd + wr + timeout + non2xx))
	rows+=("$name h1 $reqs $(kinds "connect=$connect read=$rd write=$wr timeout=$timeout non2xx=$non2xx") \
$(awk -v e="$err" -v n="$reqs" -v s=$((connect + rd + wr + timeout)) 'BEGIN { printf "%.3f%%", (n + s > 0 ? 100 * e / (n + s) : 0) }') $lat $win $rs")
	notes+=("$name h1: wrk counted $reqs responses ($non2xx not 2xx/3xx), the per-request log $ok ($lnon2xx); wrk's own p50/p99 (corrected by wrk for coordinated omission, so higher): $(awk '$1 == "50%" { a = $2 } $1 == "99%" { b = $2 } END { print a "/" b }' "$out")")
	err_note "$name h1" "$dir"
}

analyze_h2() {
	local name=$1 dir="$work/$1-h2" runs sums total started ndone succ failed errored timeout connect ok non2xx lost unsent lat win rs err killed
	shopt -s nullglob
	local outs=("$dir"/h2-*.out) logs=("$dir"/h2-*.log)
	shopt -u nullglob
	((${#outs[@]} > 0)) || die "no h2load output in $dir"
	runs=${#outs[@]}
	killed=$(cat "${outs[@]}" | grep -c '^exit 124' || true)
	# requests: T total, S started, D done, OK succeeded, F failed, E errored, TO timeout
	sums=$(awk '/^requests: / { t += $2; s += $4; d += $6; ok += $8; f += $10; e += $12; to += $14
			if ($4 == 0) c++ }
		END { printf "%d %d %d %d %d %d %d %d\n", t, s, d, ok, f, e, to, c }' "${outs[@]}")
	read -r total started ndone succ failed errored timeout connect <<<"$sums"
	read -r ok non2xx lost unsent <<<"$(scan "$dir" "${logs[@]}")"
	lat=$(pct "$dir/lat")
	win=$(pct "$dir/lat_win")
	rs=$(restart_stats "$dir")
	err=$((lost + unsent + non2xx + connect))
	rows+=("$name h2 $ok $(kinds "connect=$connect no_answer=$lost unsent=$unsent non2xx=$non2xx") \
$(awk -v e="$err" -v n=$((ok + lost + unsent + connect)) 'BEGIN { printf "%.3f%%", (n > 0 ? 100 * e / n : 0) }') $lat $win $rs")
	notes+=("$name h2: $runs h2load runs ($killed killed by timeout); their summaries: $ndone done, $succ succeeded, $((failed - total + started)) failed in flight ($((errored - total + started)) errored, $timeout timed out), $((total - started)) never started when a run ended early")
	err_note "$name h2" "$dir"
}

# --- main ----------------------------------------------------------------

echo "command: $cmdline"
echo "parameters: duration=${duration}s interval=${interval}s window=${window}s sighups_per_run=$restarts" \
	"wrk_conns=$wrk_conns h2_clients=$h2_clients h2_streams=$h2_streams h2_reqs_per_run=$h2_reqs"
echo "tools: $wrk_version | $h2load_version | $(go version)"
echo "h1 load: wrk -t$wrk_conns -c$wrk_conns -d${duration}s --timeout 5s --latency -s scripts/bench-restart.lua http://ADDR/"
echo "h2 load: $h2_clients lanes of: h2load -c1 -m$h2_streams -n$h2_reqs -N 5s --log-file=F http://ADDR/, again until ${duration}s"
echo "servers: handoff = go build -ldflags '-X main.version=bench' ./cmd/server (-log-format json), baseline = go build ./scripts/baseline; both with -addr ADDR -pid-file F"
began=$(now_us)
for name in handoff baseline; do
	for proto in h1 h2; do run "$name" "$proto"; done
done
for name in handoff baseline; do
	analyze_h1 "$name"
	analyze_h2 "$name"
done
for name in handoff baseline; do
	for proto in h1 h2; do
		k=$(cat "$work/$name-$proto/sigkilled")
		((k == 0)) || notes+=("$name $proto: $k generations did not exit within 15s of SIGTERM and were killed")
		f=$(grep -c 'upgrade failed' "$work/$name-$proto/server.log" || true)
		((f == 0)) || notes+=("$name $proto: the server logged $f failed upgrades (e.g. $(grep -m1 'upgrade failed' "$work/$name-$proto/server.log" | cut -c1-200))")
	done
done

echo
w=${window}s
printf "%-9s %-5s %9s  %-44s %8s %7s %7s %7s %8s %8s %8s %8s %10s\n" \
	server proto requests "errors(kind=n,...)" err_rate p50 p99 max "p50_$w" "p99_$w" "max_$w" restarts restart_ms_med
for row in "${rows[@]}"; do
	# shellcheck disable=SC2086 # the row is space-separated fields
	printf "%-9s %-5s %9s  %-44s %8s %7s %7s %7s %8s %8s %8s %8s %10s\n" $row
done
echo
echo "notes:"
echo "- latencies in ms, over answered requests, from the per-request logs (wrk: bench-restart.lua; h2load: --log-file);"
echo "  _$w columns: requests started within ${w} after a SIGHUP (with -i ${interval}s, that is $(awk -v w="$window_us" -v i="$interval_us" 'BEGIN { printf "%.0f%%", 100 * (w < i ? w : i) / i }') of the time after the first one)"
echo "- requests: answered requests (any status). h1 errors: wrk's socket error counters + non-2xx/3xx answers;"
echo "  h2 errors: connect = h2load runs that got no connection, no_answer = streams sent that ended without an answer,"
echo "  unsent = requests queued in h2load when GOAWAY came and never sent, non2xx = answers not 2xx/3xx."
echo "  no_answer streams had ids above the Last-Stream-ID of net/http's single GOAWAY (the server had not read them yet):"
echo "  never processed, so RFC 9113 6.8 lets a client retry them; h2load retries nothing. handoff sends the two-step"
echo "  GOAWAY of RFC 9113 6.8 instead (the final one after the client acknowledged a PING), which leaves none."
echo "  err_rate = errors / (answered + failed attempts)."
echo "- restarts = SIGHUPs after which GET / on a new connection was answered by another pid before the next one / SIGHUPs sent;"
echo "  restart_ms_med: median ms from SIGHUP to that answer (polled every 10 ms with curl)."
for n in "${notes[@]}"; do echo "- $n"; done
echo "wall time: $((($(now_us) - began) / 1000000))s for the four runs"
