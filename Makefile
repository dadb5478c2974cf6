# kube-secret-sync — see README.md. Everything here works on a fresh machine
# with Go and Debian's apt: hack/ scripts install or build what is missing
# and cache it outside the repository.

SHELL      := /usr/bin/env bash
BIN        := bin/kube-secret-sync
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# The Dockerfile uses the same flags; keep them in step.
GOFLAGS_BUILD := -trimpath -ldflags "-s -w -X main.version=$(VERSION)"
IMAGE      ?= kube-secret-sync:$(VERSION)

# Exports the locations of the Kubernetes and PostgreSQL binaries, building
# or installing them first when missing. Fails the recipe if either fails.
WITH_ASSETS = set -euo pipefail; \
	export KSS_KUBE_ASSETS="$$(hack/kube-assets.sh)"; \
	export KSS_PG_BIN="$$(hack/postgres.sh)";

# Also exports the real peers that tests run: the cert-manager controllers
# and Pebble (Let's Encrypt's test ACME server) for the cert-manager tests,
# Helm for the chart's, and Prometheus's promtool for the alerting rules'.
WITH_PEERS = $(WITH_ASSETS) \
	export KSS_CERT_MANAGER="$$(hack/cert-manager.sh)"; \
	export KSS_PEBBLE="$$(hack/pebble.sh)"; \
	export KSS_HELM="$$(hack/helm.sh)"; \
	export KSS_PROMTOOL="$$(hack/promtool.sh)";

.PHONY: all build test test-short fuzz soak lint demo devenv bench bench-smoke bench-micro img image assets clean

all: lint build

build:
	CGO_ENABLED=0 go build $(GOFLAGS_BUILD) -o $(BIN) .

## test: every test, integration tests included, against real servers.
test:
	@$(WITH_PEERS) go test -race -count=1 -timeout 30m ./...

## test-short: the unit tests only; -short skips every *_e2e_test.go test
## and starts no server.
test-short:
	go test -short -count=1 ./...

## fuzz: every fuzz target for FUZZTIME each. Their seed corpora
## (testdata/fuzz/) run in `make test` already; this looks for new inputs.
FUZZTIME ?= 5s
fuzz:
	FUZZTIME=$(FUZZTIME) hack/fuzz.sh

## soak: the chaos test (TestChaos, whose short run is part of make test)
## for SOAK_DURATION: random changes while the leader and the follower are
## SIGKILLed, PostgreSQL is killed and an API server hangs; it reports the
## convergence time. SOAK_SEED replays a run.
SOAK_DURATION ?= 10m
SOAK_SEED ?=
soak:
	@$(WITH_ASSETS) CHAOS_DURATION=$(SOAK_DURATION) CHAOS_SEED=$(SOAK_SEED) \
		go test -count=1 -run '^TestChaos$$' -v -timeout 0 . 2>&1 | grep -E '^(=== RUN|--- |ok|FAIL|PASS)|chaos:|_test.go:[0-9]+: [A-Z]'

lint:
	@out=$$(gofmt -l . ); if [[ -n "$$out" ]]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	cd hack/kube-assets && go mod verify >/dev/null
	cd hack/cert-manager && go mod verify >/dev/null && go vet .

## demo: PostgreSQL + two clusters, the real binary as leader and follower.
demo: build
	@$(WITH_ASSETS) go run ./hack/demo --binary $(BIN)

## devenv: start PostgreSQL and two clusters for a person; Ctrl-C stops them.
devenv:
	@$(WITH_ASSETS) go run ./hack/devenv

## bench: issue 5's benchmark, then the Go micro-benchmarks (bench-micro).
## hack/bench starts PostgreSQL and two clusters per size N (BENCH_SIZES),
## runs the real binary as leader and follower, and measures initial sync
## against an unthrottled client-go writer (the API server's own rate),
## idle writes, update latency (with and without PG_NOTIFY), peak RSS and
## CPU, also with the database 100 ms away (--remote-db-sizes, --db-rtt).
## It prints a markdown table and
## writes bench/results.json (BENCH_FLAGS adds flags: see
## `go run ./hack/bench -h`). Takes about 21 to 30 minutes on 2 cores, plus
## 4 for bench-micro; BENCH_SIZES=1000,10000,100000 adds N = 100,000 (about
## 20 to 35 minutes more), which the default leaves out for its time.
BENCH_SIZES ?= 1000,10000
BENCH_FLAGS ?=
bench: build
	@$(WITH_ASSETS) go run ./hack/bench --binary $(BIN) --sizes $(BENCH_SIZES) $(BENCH_FLAGS)
	@$(MAKE) --no-print-directory bench-micro

## bench-smoke: hack/bench at N = 200 with short phases (about 70 seconds);
## writes no JSON.
bench-smoke: build
	@$(WITH_ASSETS) go run ./hack/bench --binary $(BIN) --smoke

## bench-micro: the Go benchmarks (go test -bench) of every package.
bench-micro:
	@$(WITH_ASSETS) go test -run '^$$' -bench . -benchmem -count 1 -timeout 30m ./...

## assets: build or install every server and peer the tests use, and print
## the variables that point the tests at them.
assets:
	@$(WITH_PEERS) for v in KSS_KUBE_ASSETS KSS_PG_BIN KSS_CERT_MANAGER KSS_PEBBLE KSS_HELM KSS_PROMTOOL; do echo "$$v=$${!v}"; done

## img: regenerate img/architecture.png from img/architecture.dot.
img:
	@command -v dot >/dev/null || { sudo=""; [[ $$(id -u) -eq 0 ]] || sudo=sudo; $$sudo apt-get update -qq; $$sudo apt-get install -y -qq --no-install-recommends graphviz; }
	dot -Tpng -Gdpi=110 -o img/architecture.png img/architecture.dot

## image: the container image (needs a Docker engine).
image:
	docker build --build-arg VERSION=$(VERSION) \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null) \
		--build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) -t $(IMAGE) .

clean:
	rm -rf bin
