#!/usr/bin/env bash
# Steady throughput of the cheapest endpoint (GET /healthz), side by side
# in one run: a plain net/http server with the same response, the same
# server run through the upgrade package, and the reference server
# (cmd/server). wrk (HTTP/1.1) and h2load (h2c) load each in turn, in
# alternating rounds; it prints every run with the load average, then the
# medians: req/s, the ratio against plain net/http (taken round by round),
# the server's CPU time and heap allocations per request. The engine is a
# Go program, scripts/steady (see its doc comment); this script checks the
# tools, builds, and runs it.
#
# Usage: scripts/bench-steady.sh [-i] [-r ROUNDS] [-d SECONDS] [-c CONNS] [-m STREAMS] [-p PROTOS] [-C BINARY]
#   -i  install wrk and h2load with apt-get when missing (as root); without
#       it the script only says what to install
#   -r  rounds (default 5); each loads every server once per protocol
#   -d  seconds of each load run (default 5)
#   -c  connections of wrk and h2load (default 16; one client thread)
#   -m  concurrent streams per h2c connection (default 1)
#   -p  protocols: h1, h2c or h1,h2c (default h1,h2c)
#   -C  another build of cmd/server to run beside this one, shown as
#       "compare" (to measure a change side by side)
# It takes about ROUNDS x 3 (4 with -C) x (number of protocols) x SECONDS, plus the
# build and a one-second warm-up per server and protocol. Servers listen
# on, and clients send to, 127.0.0.1 only; every process is stopped by pid.
# The machine should be otherwise quiet: the ratios are meaningful because
# the servers run under the same conditions, but a busy machine blurs them.
set -euo pipefail

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

install=0 rounds=5 secs=5 conns=16 streams=1 protos=h1,h2c compare=
while getopts "ir:d:c:m:p:C:h" opt; do
	case $opt in
	i) install=1 ;;
	r) rounds=$OPTARG ;;
	d) secs=$OPTARG ;;
	c) conns=$OPTARG ;;
	m) streams=$OPTARG ;;
	p) protos=$OPTARG ;;
	C) compare=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage
for v in "$rounds" "$secs" "$conns" "$streams"; do
	case $v in '' | *[!0-9]*) echo "bench-steady: -r, -d, -c and -m take whole numbers, not '$v'" >&2; exit 2 ;; esac
done

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$install" -eq 1 ]; then
		apt-get install -y "${missing[@]}"
	else
		echo "bench-steady: missing tools; install them with: apt-get install -y ${missing[*]} (or run with -i)" >&2
		exit 1
	fi
fi

if [ -n "$compare" ]; then
	[ -x "$compare" ] || { echo "bench-steady: -C $compare is not an executable file" >&2; exit 2; }
	compare=$(cd "$(dirname "$compare")" && pwd)/$(basename "$compare")
fi
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/server" ./cmd/server
go build -o "$work/steady" ./scripts/steady
"$work/steady" -server "$work/server" ${compare:+-compare "$compare"} -rounds "$rounds" -duration "${secs}s" \
	-conns "$conns" -streams "$streams" -proto "$protos" -log-dir "$work"
