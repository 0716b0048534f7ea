#!/usr/bin/env bash
# Measures how long a restart takes, side by side on the same build:
# a handoff (SIGHUP, until the first answer from the new generation), the
# same for the minimal tableflip server of scripts/baseline (tableflip's
# README example: the least a tableflip hot restart costs; the two are
# restarted in turn, in the same run), the same server as that one
# written with the upgrade package (scripts/minimal: what the library
# costs without the reference server's own start-up), the same in
# supervisor mode (server -supervise), and the baseline without one
# (SIGTERM, start again, until the first answer). It prints the median and
# p90 of each over N restarts, the polls that failed meanwhile (refused
# connections), the idle RSS, and the ratios.
# Then the latency spike, for the reference server and the tableflip
# server: under a light load of fast requests (GET /), the slowest request
# in the 2 s after each of M restarts (median over the restarts, and the
# worst) against the p99 of the requests outside those windows, and the
# same figure for control windows without a restart.
# The engine is the e2e package's benchmarks (e2e/bench_test.go,
# e2e/spike_test.go). Every request goes to 127.0.0.1; every process is
# started and stopped by the e2e harness by pid. The load average is
# printed before and after: figures from a busy machine are not the goal's.
# Usage: scripts/restart-latency.sh [N] [M]
#   N restarts of each kind (default 20), M restarts for the spike (default
#   10; 0 skips it; each takes about 4 s)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
m="${2:-10}"
for v in "$n" "$m"; do
	case "$v" in '' | *[!0-9]*) echo "usage: $0 [N] [M] (whole numbers)" >&2; exit 2 ;; esac
done
[ "$n" -ge 1 ] || { echo "usage: $0 [N] [M]: N must be at least 1" >&2; exit 2; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# -benchtime Nx applies to every benchmark run, so the spike runs apart.
# bench PATTERN COUNT runs the benchmarks and prints their output; on a
# failure it shows all of it.
bench() {
	local o
	if ! o=$(go test -run '^$' -bench "$1" -benchtime "$2x" -count 1 -timeout 60m ./e2e 2>&1); then
		echo "$o" >&2
		echo "restart-latency: go test -bench '$1' failed" >&2
		exit 1
	fi
	echo "$o"
}
out=$(bench '^BenchmarkRestart' "$n")
if [ "$m" -gt 0 ]; then
	out+=$'\n'$(bench '^BenchmarkSpike' "$m")
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$out" | grep -E '^Benchmark' >&2

echo "$out" | awk -v n="$n" -v m="$m" '
/^BenchmarkRestart/ {
	name = ($1 ~ /Supervised/) ? "supervised (SIGHUP)" : ($1 ~ /Handoff/) ? "handoff (SIGHUP)" : "stop + start (baseline)"
	for (i = 3; i < NF; i += 2) {
		if ($(i+1) ~ /^tableflip-/) {
			key = $(i+1); sub(/^tableflip-/, "", key)
			v["tableflip (SIGHUP)", key] = $i
		} else if ($(i+1) ~ /^minimal-/) {
			key = $(i+1); sub(/^minimal-/, "", key)
			v["minimal upgrade (SIGHUP)", key] = $i
		} else {
			v[name, $(i+1)] = $i
		}
	}
	names[++k] = name
	if (name ~ /^handoff/) { names[++k] = "tableflip (SIGHUP)"; names[++k] = "minimal upgrade (SIGHUP)" }
}
/^BenchmarkSpike/ {
	name = ($1 ~ /Tableflip/) ? "tableflip" : "handoff"
	for (i = 3; i < NF; i += 2) s[name, $(i+1)] = $i
	snames[++ks] = name
}
END {
	printf "\nrestart latency over %d restarts of each kind\n", n
	printf "%-24s %10s %10s %14s %14s\n", "", "median ms", "p90 ms", "failed polls", "idle RSS KiB"
	for (j = 1; j <= k; j++) {
		x = names[j]
		printf "%-24s %10.2f %10.2f %14d %14d\n", x, v[x, "median-ms"], v[x, "p90-ms"], v[x, "failed-polls"], v[x, "idle-rss-KiB"]
	}
	h = v["handoff (SIGHUP)", "median-ms"]; b = v["stop + start (baseline)", "median-ms"]; t = v["tableflip (SIGHUP)", "median-ms"]
	if (h > 0 && t > 0) printf "median ratio handoff/tableflip: %.2f (restarted in turn; goal: at most 1.3)\n", h / t
	l = v["minimal upgrade (SIGHUP)", "median-ms"]
	if (l > 0 && t > 0) printf "median ratio minimal upgrade/tableflip: %.2f (the library alone, the same server as tableflip'"'"'s)\n", l / t
	if (h > 0 && b > 0) printf "median ratio handoff/baseline: %.2f\n", h / b
	p = v["supervised (SIGHUP)", "median-ms"]
	if (p > 0 && h > 0) printf "median ratio supervised/handoff: %.2f (supervisor RSS %d KiB)\n", p / h, v["supervised (SIGHUP)", "supervisor-rss-KiB"]
	if (ks > 0) {
		printf "\nlatency spike over %d restarts (fast requests: GET /, light keep-alive load)\n", m
		printf "%-10s %14s %10s %15s %10s %12s %12s %8s %9s\n", "", "steady p99 ms", "spike ms", "worst spike ms", "spike/p99", "control ms", "control/p99", "failed", "requests"
		for (j = 1; j <= ks; j++) {
			x = snames[j]
			printf "%-10s %14.2f %10.2f %15.2f %10.2f %12.2f %12.2f %8d %9d\n", x, s[x, "steady-p99-ms"], s[x, "spike-ms"], s[x, "worst-spike-ms"], s[x, "spike-ratio"], s[x, "control-ms"], s[x, "control-ratio"], s[x, "failed-requests"], s[x, "requests"]
		}
		print "(spike: the median over the restarts of the slowest request in the 2 s after each; control: the same for"
		print " the 2 s after that, with no restart: what the machine alone does; goal: spike/p99 at most 1.5 on a quiet machine)"
	}
}'
