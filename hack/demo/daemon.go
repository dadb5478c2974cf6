package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// daemon is one kube-secret-sync process, run as a child of the demo. Its
// output goes to a log file, never to the terminal.
type daemon struct {
	*testenv.Daemon // nil until started

	role    string // "leader" or "follower"
	cluster string
	podName string
	metrics string // host:port of /metrics, /readyz
}

// start starts binary as d, with its log in logDir and exactly vars on top
// of what the OS needs (see testenv.StartDaemon), so that a DSN or
// NAMESPACES in the caller's shell cannot change the demo.
func (d *daemon) start(binary, logDir string, vars map[string]string) error {
	var err error
	d.Daemon, err = testenv.StartDaemon(d.role, binary, filepath.Join(logDir, d.role+".log"), vars)
	return err
}

// get fetches path from the daemon's metrics server.
func (d *daemon) get(ctx context.Context, path string) (int, string, error) {
	return testenv.MetricsGet(ctx, d.metrics, path)
}

// metric returns the value of an unlabelled sample in the Prometheus text
// exposition of /metrics.
func (d *daemon) metric(ctx context.Context, name string) (float64, error) {
	_, body, err := d.get(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	return parseMetric(body, name)
}

func parseMetric(exposition, name string) (float64, error) {
	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// tail returns the last n lines of the daemon's log.
func (d *daemon) tail(n int) []string {
	b, err := os.ReadFile(d.LogPath)
	if err != nil {
		return []string{err.Error()}
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
