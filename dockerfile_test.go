package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDockerfile: the image carries the OCI annotations an operator and a
// registry read (revision, created, licenses, documentation, and the
// rest), fed by make image; its license is the repository's; and its build
// flags are make build's (the Dockerfile cannot be built here, so this is
// what keeps the two from drifting).
func TestDockerfile(t *testing.T) {
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	docker, makefile, license := read("Dockerfile"), read("Makefile"), read("LICENSE")
	labels := map[string]string{}
	for _, m := range regexp.MustCompile(`org\.opencontainers\.image\.(\w+)="([^"]*)"`).FindAllStringSubmatch(docker, -1) {
		labels[m[1]] = m[2]
	}
	for key, want := range map[string]string{
		"title": "kube-secret-sync", "source": "https://github.com/kube-secret-sync/kube-secret-sync",
		"version": "${VERSION}", "revision": "${REVISION}", "created": "${CREATED}", "licenses": "Apache-2.0",
		"documentation": "https://github.com/kube-secret-sync/kube-secret-sync/blob/main/README.md",
	} {
		if labels[key] != want {
			t.Errorf("label org.opencontainers.image.%s = %q; want %q", key, labels[key], want)
		}
	}
	if !strings.Contains(license, "Apache License") || !strings.Contains(license, "Version 2.0") {
		t.Error("LICENSE is not the Apache License 2.0 that the image's licenses label names")
	}
	for _, arg := range []string{"--build-arg VERSION=", "--build-arg REVISION=", "--build-arg CREATED="} {
		if !strings.Contains(makefile, arg) {
			t.Errorf("make image does not pass %s", arg)
		}
	}
	flags := regexp.MustCompile(`GOFLAGS_BUILD := (.*)`).FindStringSubmatch(makefile)
	if flags == nil {
		t.Fatal("no GOFLAGS_BUILD in the Makefile")
	}
	want := strings.ReplaceAll(flags[1], "$(VERSION)", "${VERSION}")
	if !strings.Contains(docker, "go build "+want+" -o /out/kube-secret-sync .") {
		t.Errorf("the Dockerfile's go build does not use make build's flags %s", want)
	}
}
