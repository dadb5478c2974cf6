# syntax=docker/dockerfile:1
#
# kube-secret-sync container image: a static binary on distroless, run as
# non-root. Build with `make image` (which passes VERSION, REVISION and
# CREATED) or
#   docker build --build-arg VERSION=v1.2.3 -t kube-secret-sync:v1.2.3 .
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 .

# The builder runs on the build machine's own platform and cross-compiles
# (pure Go, CGO_ENABLED=0), which is much faster than emulating the target.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src

# Module download is its own layer: it is rebuilt only when go.mod or go.sum
# change, not on every source edit.
COPY go.mod go.sum ./
RUN go mod download && go mod verify

COPY . .

# Keep these flags identical to the Makefile's `build` target
# (GOFLAGS_BUILD): -trimpath, -s -w, and the version stamped into main.version.
ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/kube-secret-sync .

# distroless/static: CA certificates, tzdata and /etc/passwd, nothing else (no
# shell, no package manager). The :nonroot variant runs as uid/gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
# OCI annotations (image-spec annotations.md). REVISION and CREATED come from
# `make image` (the commit and an RFC 3339 time); a plain docker build leaves
# them empty rather than wrong.
ARG VERSION=dev
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="kube-secret-sync" \
      org.opencontainers.image.description="Syncs labelled Kubernetes Secrets between clusters through an encrypted shared SQL database" \
      org.opencontainers.image.source="https://github.com/kube-secret-sync/kube-secret-sync" \
      org.opencontainers.image.url="https://github.com/kube-secret-sync/kube-secret-sync" \
      org.opencontainers.image.documentation="https://github.com/kube-secret-sync/kube-secret-sync/blob/main/README.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /out/kube-secret-sync /kube-secret-sync
# Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# METRICS_ADDR default: /metrics, /healthz and /readyz.
EXPOSE 8080
ENTRYPOINT ["/kube-secret-sync"]
