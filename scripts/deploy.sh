#!/usr/bin/env bash
# Deploys a new server binary with a hot restart, and rolls back if it does
# not take over.
#
# Usage: scripts/deploy.sh [-b INSTALLED] NEW_BINARY [-- CTL_FLAGS...]
#   -b INSTALLED  path the running server was started from
#                 (default: $HANDOFF_BIN, else ./server)
#   CTL_FLAGS     flags for `server ctl`, the same the server runs with
#                 (-config, -data-dir, -control-addr, -control-token-file);
#                 HANDOFF_* environment variables work too.
#
# Steps, each shown as it goes:
#   1. NEW_BINARY -version must run and print a version.
#   2. The running binary is kept as INSTALLED.prev, and NEW_BINARY is
#      installed at INSTALLED atomically (copied beside it, then renamed).
#   3. `INSTALLED.prev ctl upgrade`: the known-good binary asks the server to
#      start the new one, and waits until it is ready or has failed.
#   4. `ctl status` must report the new version.
# On failure it puts the previous binary back (and, if the new generation
# took over but serves the wrong version, upgrades back to it), then exits
# 1 with the reason. Exit status 2 is a usage error.
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
step() { printf '==> %s\n' "$*"; }
fail() { printf 'deploy failed: %s\n' "$*" >&2; exit 1; }

installed="${HANDOFF_BIN:-./server}"
while getopts 'b:h' opt; do
	case "$opt" in
	b) installed="$OPTARG" ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
new="$1"
shift
if [ $# -gt 0 ]; then
	[ "$1" = "--" ] || usage
	shift
fi
ctl_flags=("$@")

[ -f "$new" ] || fail "new binary $new: no such file"
[ -x "$installed" ] || fail "installed binary $installed: missing or not executable (is the server installed there? see -b)"
case "$(cd "$(dirname "$new")" && pwd)/$(basename "$new")" in
"$(cd "$(dirname "$installed")" && pwd)/$(basename "$installed")") fail "new binary and installed binary are the same file" ;;
esac

step "1/4 checking that $new runs"
chmod +x "$new" 2>/dev/null || true
if ! version=$(timeout 10 "$new" -version 2>&1); then
	fail "$new -version failed: $version"
fi
version=$(printf '%s' "$version" | head -n 1)
[ -n "$version" ] || fail "$new -version printed nothing"
echo "    new version: $version"

prev="$installed.prev"
step "2/4 installing it at $installed (previous binary kept as $prev)"
cp -p "$installed" "$prev.tmp.$$"
mv -f "$prev.tmp.$$" "$prev"
cp "$new" "$installed.new.$$"
chmod 755 "$installed.new.$$"
mv -f "$installed.new.$$" "$installed"

# json_field prints the top-level field $1 of the JSON object in $2, a
# number or a string without escapes, when it comes before any nested
# object: enough for the control API's answers.
json_field() {
	printf '%s' "$2" | sed -n "s/^{\([^{}]*,\)\{0,1\}\"$1\":\"\{0,1\}\([^\",}]*\).*/\2/p" | head -n 1
}

# restore puts the previous binary back at $installed, atomically.
restore() {
	echo "    restoring the previous binary at $installed"
	cp -p "$prev" "$installed.restore.$$"
	mv -f "$installed.restore.$$" "$installed"
}

step "3/4 asking the server to upgrade (server ctl upgrade)"
if ! out=$("$prev" ctl upgrade -json "${ctl_flags[@]}" 2>&1); then
	restore
	msg=$(printf '%s' "$out" | grep -v '^{' | head -n 1)
	fail "${msg#server: } (the old generation is still serving)"
fi
new_pid=$(json_field pid "$out")
new_version=$(json_field version "$out")
echo "    generation $(json_field generation "$out") is ready: pid $new_pid, version $new_version"

step "4/4 checking the version being served"
serving="" serving_pid=""
# The old generation may take a moment to stop accepting: ask until the
# new pid answers (at most 50 times, 0.1 s apart).
for _ in $(seq 50); do
	if status=$("$prev" ctl status -json "${ctl_flags[@]}" 2>/dev/null); then
		serving_pid=$(json_field pid "$status")
		serving=$(json_field version "$status")
		[ "$serving_pid" = "$new_pid" ] && break
	fi
	sleep 0.1
done
if [ "$serving_pid" != "$new_pid" ] || [ "$serving" != "$version" ]; then
	restore
	if back=$("$prev" ctl upgrade "${ctl_flags[@]}" 2>&1); then
		echo "    rolled back: $back"
	else
		echo "    roll back failed too: $back" >&2
	fi
	fail "pid ${serving_pid:-?} serves version ${serving:-?} after the upgrade, want pid $new_pid with version $version"
fi
echo "    pid $serving_pid serves $serving"
echo "deployed $version"
