package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// settings are the defaults the binary under test prints in --help, so
// that the phases follow the binary as built, not what this file believes.
type settings struct {
	version  string
	defaults map[string]string // variable -> default, for variables that have one
	listed   map[string]bool   // every variable --help lists
}

// helpLine matches "  NAME   description (default X)" in --help.
var helpLine = regexp.MustCompile(`^\s+([A-Z][A-Z0-9_]*)\s+.*?(?:\(default ([^)]*)\))?\s*$`)

// parseHelp reads the variables and their defaults from --help output.
func parseHelp(out string) settings {
	s := settings{defaults: map[string]string{}, listed: map[string]bool{}}
	for _, line := range strings.Split(out, "\n") {
		m := helpLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		s.listed[m[1]] = true
		if m[2] != "" {
			s.defaults[m[1]] = m[2]
		}
	}
	return s
}

// readSettings runs `binary --help` and `binary --version`.
func readSettings(ctx context.Context, binary string) (settings, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// --help prints to stderr.
	help, err := exec.CommandContext(ctx, binary, "--help").CombinedOutput()
	if err != nil {
		return settings{}, fmt.Errorf("%s --help: %w (build it with make build)", binary, err)
	}
	s := parseHelp(string(help))
	version, err := exec.CommandContext(ctx, binary, "--version").Output()
	if err != nil {
		return settings{}, fmt.Errorf("%s --version: %w", binary, err)
	}
	s.version = strings.TrimSpace(string(version))
	for _, name := range []string{"TICK_SECONDS", "POLL_SECONDS"} {
		if _, ok := s.defaults[name]; !ok {
			return settings{}, fmt.Errorf("%s --help lists no default for %s; the bench needs it", binary, name)
		}
	}
	return s, nil
}

func (s settings) float(name string) (float64, error) {
	v, err := strconv.ParseFloat(s.defaults[name], 64)
	if err != nil {
		return 0, fmt.Errorf("--help: default of %s: %w", name, err)
	}
	return v, nil
}

func (s settings) int(name string) (int, error) {
	v, err := strconv.Atoi(s.defaults[name])
	if err != nil {
		return 0, fmt.Errorf("--help: default of %s: %w", name, err)
	}
	return v, nil
}

// hasHint reports whether the binary has the PostgreSQL wake-up hint switch.
func (s settings) hasHint() bool { return s.listed["PG_NOTIFY"] }
