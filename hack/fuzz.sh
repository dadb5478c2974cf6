#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME (default 5s) each.
# `go test -fuzz` takes one target of one package at a time, so the targets
# are found by name: a new Fuzz function is picked up without editing this.
# Their committed seed corpora (testdata/fuzz/) run in every `go test`.
#
# The first run compiles the whole dependency graph with coverage
# instrumentation (several minutes); the go build cache keeps it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzztime=${FUZZTIME:-5s}

mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*_test.go' | xargs grep -l '^func Fuzz[A-Za-z0-9_]*(' || true)
if [[ ${#files[@]} -eq 0 ]]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi
for file in "${files[@]}"; do
	dir=$(dirname "$file")
	pkg=./$dir
	[[ $dir == . ]] && pkg=.
	for target in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$file"); do
		echo "fuzz: $pkg $target for $fuzztime"
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"; then
			# The go command saved the failing input; show it, since a CI
			# machine's working tree is gone after the run.
			for input in $(git ls-files --others --exclude-standard -- "$dir/testdata/fuzz/$target"); do
				echo "--- $input (add it to the repository once fixed: it becomes a regression test)"
				cat "$input"
			done
			exit 1
		fi
	done
done
