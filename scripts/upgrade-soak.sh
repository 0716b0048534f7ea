#!/usr/bin/env bash
# Upgrades the reference server N times in a row under a light keep-alive
# load, and prints the open file descriptors and the RSS of the serving
# generation (sampled just before each upgrade): the first, the median and
# the last, and the load's failed requests. Flat figures mean no generation
# leaks into the next. The engine is e2e's BenchmarkUpgradeSoak; every
# request goes to 127.0.0.1, and every process is started and stopped by
# the e2e harness by pid. It takes about N/4 seconds plus the build.
# Usage: scripts/upgrade-soak.sh [N]    (N upgrades, default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000}"
case "$n" in '' | *[!0-9]*) echo "usage: $0 [N] (N a whole number)" >&2; exit 2 ;; esac
[ "$n" -ge 1 ] && [ "$n" -le 100000 ] || { echo "usage: $0 [N]: N from 1 to 100000" >&2; exit 2; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
if ! out=$(go test -run '^$' -bench '^BenchmarkUpgradeSoak$' -benchtime "${n}x" -count 1 -timeout 6h ./e2e 2>&1); then
	echo "$out" >&2
	echo "upgrade-soak: the benchmark failed" >&2
	exit 1
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$out" | grep -E '^BenchmarkUpgradeSoak'
echo "$out" | awk -v n="$n" '
/^BenchmarkUpgradeSoak/ { for (i = 3; i < NF; i += 2) v[$(i+1)] = $i }
END {
	printf "\n%d consecutive upgrades under light load; the serving generation, sampled before each\n", n
	printf "%-16s %10s %10s %10s\n", "", "first", "median", "last"
	printf "%-16s %10d %10d %10d\n", "open fds", v["fds-first"], v["fds-median"], v["fds-last"]
	printf "%-16s %10d %10d %10d   (max %d)\n", "RSS KiB", v["rss-KiB-first"], v["rss-KiB-median"], v["rss-KiB-last"], v["rss-KiB-max"]
	printf "requests of the load: %d, failed: %d\n", v["requests"], v["failed-requests"]
}'
