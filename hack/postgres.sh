#!/usr/bin/env bash
# Prints the directory holding PostgreSQL's server binaries (initdb,
# postgres), installing Debian's PostgreSQL first when none is installed.
# The tests start their own throw-away servers from these binaries
# (internal/testenv); no system-wide cluster is created or started.
set -euo pipefail

find_bin() {
	if [[ -n "${KSS_PG_BIN:-}" ]]; then
		echo "$KSS_PG_BIN"
		return
	fi
	ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

bin=$(find_bin)
if [[ -z "$bin" || ! -x "$bin/initdb" ]]; then
	echo "postgres.sh: installing PostgreSQL from Debian's packages" >&2
	sudo=""
	[[ $(id -u) -eq 0 ]] || sudo="sudo"
	# Only the binaries are wanted: skip the package's default cluster.
	$sudo mkdir -p /etc/postgresql-common
	grep -qs '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf ||
		echo 'create_main_cluster = false' | $sudo tee -a /etc/postgresql-common/createcluster.conf >/dev/null
	$sudo apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >&2
	bin=$(find_bin)
fi
[[ -x "$bin/initdb" ]] || { echo "postgres.sh: no initdb in '$bin'" >&2; exit 1; }
echo "$bin"
