#!/usr/bin/env bash
# Deploys a new server binary with a hot restart, and rolls back if it does
# not take over.
#
# Usage: scripts/deploy.sh [-h] [-b INSTALLED] NEW_BINARY [-- CTL_FLAGS...]
#   -b INSTALLED  path the running server was started from
#                 (default: $HANDOFF_BIN, else ./server)
#   NEW_BINARY    the new build. A name without a slash is a file in the
#                 current directory (never looked up in PATH). The file is
#                 left as it is: a copy of it, mode 0755, is checked and
#                 installed, so it need not be executable.
#   CTL_FLAGS     flags for `server ctl`, the same the server runs with
#                 (-config, -data-dir, -control-addr, -control-token-file);
#                 HANDOFF_* environment variables work too.
#
# It upgrades a running server; it does not start one. It writes beside
# INSTALLED, so for a system path (/usr/local/bin) run it as root or with
# sudo. It needs no JSON parser: it asks `server ctl -field` (a server
# build from before that flag cannot be deployed with this script; run
# `server ctl upgrade` by hand once).
#
# Steps, each shown as it goes:
#   1. The running server must answer `INSTALLED ctl status`.
#   2. A copy of NEW_BINARY, staged beside INSTALLED, must run with
#      -version and print a version.
#   3. The running binary is kept as INSTALLED.prev, and the staged copy
#      is renamed to INSTALLED (atomically).
#   4. `INSTALLED.prev ctl upgrade`: the known-good binary asks the server to
#      start the new one, and waits until it is ready or has failed.
#   5. `ctl status` must report the new pid and version.
# On failure it puts the previous binary back (and, if the new generation
# took over but serves the wrong version, upgrades back to it), says which
# generation serves, then exits 1 with the reason. Nothing is installed
# when step 1 or 2 fails. Exit status 2 is a usage error; -h prints this.
set -euo pipefail

# usage prints the comment above, from its second line to its end.
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }
step() { printf '==> %s\n' "$*"; }
fail() { printf 'deploy failed: %s\n' "$*" >&2; exit 1; }

# bad_usage names the mistake, then prints the usage, and exits 2.
bad_usage() { printf 'deploy.sh: %s\n\n' "$*" >&2; usage >&2; exit 2; }

installed="${HANDOFF_BIN:-./server}"
while getopts ':b:h' opt; do
	case "$opt" in
	b) installed="$OPTARG" ;;
	h) usage; exit 0 ;;
	:) bad_usage "-$OPTARG needs a value" ;;
	*) bad_usage "unknown option -$OPTARG" ;;
	esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || bad_usage "NEW_BINARY is missing"
new="$1"
shift
if [ $# -gt 0 ]; then
	[ "$1" = "--" ] || bad_usage "unexpected argument $1 (CTL_FLAGS go after --)"
	shift
fi
ctl_flags=("$@")

# A command name without a slash is looked up in PATH: make both paths.
case "$new" in */*) ;; *) new="./$new" ;; esac
case "$installed" in */*) ;; *) installed="./$installed" ;; esac
dir=$(dirname "$installed")
prev="$installed.prev"

[ -f "$new" ] || fail "new binary $new: no such file"
[ -x "$installed" ] || fail "installed binary $installed: missing or not executable (is the server installed there? see -b)"
if [ "$new" -ef "$installed" ]; then
	fail "new binary and installed binary are the same file"
fi
if [ ! -w "$dir" ] || { [ -e "$prev" ] && [ ! -w "$prev" ]; }; then
	fail "cannot write $installed and $prev in $dir: permission denied: run as root or with sudo"
fi

tmp=$(mktemp -d)
staged=""
cleanup() {
	if [ -n "$staged" ]; then rm -f "$staged"; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# ctl_fields VERB FIELDS runs `ctl VERB -field FIELDS` with the binary in
# $ctl_bin and prints the values, one a line; on failure, why prints the
# reason.
ctl_bin="$installed"
ctl_fields() { "$ctl_bin" ctl "$1" -field "$2" "${ctl_flags[@]}" 2>"$tmp/err"; }
why() { head -n 1 "$tmp/err" | sed 's/^server: //'; }

# serving says which generation serves now, or that none answers.
serving() {
	local s pid ver
	if s=$(ctl_fields status pid,version); then
		{ read -r pid; read -r ver; } <<<"$s"
		printf 'pid %s, version %s, is serving' "$pid" "$ver"
	else
		printf 'no server answers now (%s): see its log' "$(why)"
	fi
}

step "1/5 checking the running server ($installed ctl status)"
if ! status=$(ctl_fields status pid,version); then
	reason=$(why)
	case "$reason" in
	*"flag provided but not defined: -field"*)
		fail "$installed is a build whose ctl has no -field; upgrade it once by hand (install the new binary, then $installed ctl upgrade)" ;;
	esac
	fail "no server answers ($reason); deploy.sh upgrades a running server: start it first, or check CTL_FLAGS (nothing was installed)"
fi
{ read -r old_pid; read -r old_version; } <<<"$status"
echo "    pid $old_pid serves version $old_version"

step "2/5 checking that $new runs"
if [ ! -x "$new" ]; then
	echo "    $new is not executable: checking and installing a copy with mode 0755 (the file itself is left as is)"
fi
staged="$installed.new.$$"
cp "$new" "$staged" 2>"$tmp/err" || fail "copy $new to $staged: $(cat "$tmp/err")"
chmod 755 "$staged"
if ! version=$(timeout 10 "$staged" -version 2>&1); then
	fail "$new -version failed: $version"
fi
version=$(printf '%s' "$version" | head -n 1)
[ -n "$version" ] || fail "$new -version printed nothing"
echo "    new version: $version"

step "3/5 installing it at $installed (previous binary kept as $prev)"
cp -p "$installed" "$prev.tmp.$$" 2>"$tmp/err" || fail "keep the previous binary: $(cat "$tmp/err")"
mv -f "$prev.tmp.$$" "$prev"
mv -f "$staged" "$installed"
staged=""

# restore puts the previous binary back at $installed, atomically.
restore() {
	echo "    restoring the previous binary at $installed"
	cp -p "$prev" "$installed.restore.$$"
	mv -f "$installed.restore.$$" "$installed"
}

# From here on the known-good binary talks to the server.
ctl_bin="$prev"
step "4/5 asking the server to upgrade ($prev ctl upgrade)"
if ! out=$(ctl_fields upgrade pid,version,generation); then
	reason=$(why)
	restore
	fail "$reason ($(serving))"
fi
{ read -r new_pid; read -r new_version; read -r new_gen; } <<<"$out"
echo "    generation $new_gen is ready: pid $new_pid, version $new_version"

step "5/5 checking the version being served"
serving_pid="" serving_version=""
# The old generation may take a moment to stop accepting: ask until the
# new pid answers (at most 50 times, 0.1 s apart).
for _ in $(seq 50); do
	if status=$(ctl_fields status pid,version); then
		{ read -r serving_pid; read -r serving_version; } <<<"$status"
		[ "$serving_pid" = "$new_pid" ] && break
	fi
	sleep 0.1
done
if [ "$serving_pid" != "$new_pid" ] || [ "$serving_version" != "$version" ]; then
	restore
	if back=$("$prev" ctl upgrade "${ctl_flags[@]}" 2>&1); then
		echo "    rolled back: $back"
	else
		echo "    roll back failed too: $back" >&2
	fi
	fail "pid ${serving_pid:-?} serves version ${serving_version:-?} after the upgrade, want pid $new_pid with version $version ($(serving))"
fi
echo "    pid $serving_pid serves $serving_version"
echo "deployed $version"
