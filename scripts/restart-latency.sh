#!/usr/bin/env bash
# Measures how long a restart takes, side by side on the same build:
# a handoff (SIGHUP, until the first answer from the new generation), the
# same in supervisor mode (server -supervise), and the baseline without one
# (SIGTERM, start again, until the first answer). It
# prints the median and p90 of each over N restarts, the polls that failed
# meanwhile (refused connections), the idle RSS, and the ratio.
# Every request goes to 127.0.0.1; every process is started and stopped by
# the e2e harness by pid.
# Usage: scripts/restart-latency.sh [N]    (N restarts of each kind, default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
case "$n" in ''|*[!0-9]*) echo "usage: $0 [N] (N a whole number)" >&2; exit 2 ;; esac

out=$(go test -run '^$' -bench 'BenchmarkRestart' -benchtime "${n}x" -count 1 ./e2e)
echo "$out" | grep -E '^Benchmark' >&2

echo "$out" | awk -v n="$n" '
/^BenchmarkRestart/ {
	name = ($1 ~ /Supervised/) ? "supervised (SIGHUP)" : ($1 ~ /Handoff/) ? "handoff (SIGHUP)" : "stop + start (baseline)"
	for (i = 3; i < NF; i += 2) v[name, $(i+1)] = $i
	names[++k] = name
}
END {
	printf "\nrestart latency over %d restarts of each kind\n", n
	printf "%-24s %10s %10s %14s %14s\n", "", "median ms", "p90 ms", "failed polls", "idle RSS KiB"
	for (j = 1; j <= k; j++) {
		m = names[j]
		printf "%-24s %10.2f %10.2f %14d %14d\n", m, v[m, "median-ms"], v[m, "p90-ms"], v[m, "failed-polls"], v[m, "idle-rss-KiB"]
	}
	h = v["handoff (SIGHUP)", "median-ms"]; s = v["stop + start (baseline)", "median-ms"]
	if (h > 0) printf "median ratio handoff/baseline: %.2f\n", h / s
	p = v["supervised (SIGHUP)", "median-ms"]
	if (p > 0 && h > 0) printf "median ratio supervised/handoff: %.2f (supervisor RSS %d KiB)\n", p / h, v["supervised (SIGHUP)", "supervisor-rss-KiB"]
}'
