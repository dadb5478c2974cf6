package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// daemon is one kube-secret-sync process, a child of the bench. Its log
// goes to a file.
type daemon struct {
	*testenv.Daemon // nil until started

	role    string // "leader" or "follower"
	phase   string
	n       int // the workload's size
	podName string
	metrics string // host:port of /metrics and /readyz
	pprof   string // host:port of /debug/pprof, if profiled
	logPath string
}

// start starts binary as d, with its log in logDir and exactly vars on top
// of what the OS needs (see testenv.StartDaemon), so that a DSN or
// TICK_SECONDS in the caller's shell cannot change the measurement. Errors
// name the daemon by role and phase.
func (d *daemon) start(binary, logDir string, vars map[string]string) error {
	d.logPath = filepath.Join(logDir, fmt.Sprintf("n%d-%s-%s.log", d.n, d.phase, d.role))
	var err error
	d.Daemon, err = testenv.StartDaemon(fmt.Sprintf("%s (%s)", d.role, d.phase), binary, d.logPath, vars)
	return err
}

// stop is testenv.Daemon.Stop without the duration; a nil d is not
// running.
func (d *daemon) stop(grace time.Duration) error {
	if d == nil {
		return nil
	}
	_, err := d.Stop(grace)
	return err
}

// errPortTaken says a daemon could not bind its metrics address.
var errPortTaken = errors.New("metrics address taken by another process")

// get fetches path from the daemon's metrics server.
func (d *daemon) get(ctx context.Context, path string) (int, string, error) {
	if d.metrics == "" {
		return 0, "", fmt.Errorf("%s (%s): no metrics server", d.role, d.phase)
	}
	return testenv.MetricsGet(ctx, d.metrics, path)
}

// samples returns the daemon's Prometheus samples.
func (d *daemon) samples(ctx context.Context) ([]sample, error) {
	code, body, err := d.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("%s /metrics: HTTP %d", d.role, code)
	}
	return parseSamples(body), nil
}

// procStats is what /proc says about a process.
type procStats struct {
	hwmMiB float64 // VmHWM: peak resident set
	rssMiB float64 // VmRSS: resident set now
	// fileMiB (RssFile) is the part of VmRSS that is file pages (the
	// binary's own), which the kernel reclaims under a memory limit.
	fileMiB float64
	cpuS    float64 // utime + stime
}

// clockTicks is sysconf(_SC_CLK_TCK), the unit of /proc/<pid>/stat's times.
var clockTicks = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100 // USER_HZ on every Linux architecture Go supports
}()

func readProc(pid int) (procStats, error) {
	var p procStats
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, err
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return p, err
	}
	return parseProc(string(status), string(stat), clockTicks)
}

// parseProc reads VmHWM and VmRSS (kB) from /proc/<pid>/status and utime
// and stime (fields 14 and 15, in clock ticks) from /proc/<pid>/stat.
func parseProc(status, stat string, ticks float64) (procStats, error) {
	var p procStats
	found := 0
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmHWM" && k != "VmRSS" && k != "RssFile") {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return p, fmt.Errorf("/proc status %s: %w", k, err)
		}
		switch k {
		case "VmHWM":
			p.hwmMiB = kb / 1024
		case "VmRSS":
			p.rssMiB = kb / 1024
		case "RssFile":
			p.fileMiB = kb / 1024
			continue
		}
		found++
	}
	if found != 2 {
		return p, errors.New("/proc status: VmHWM or VmRSS missing")
	}
	// The command name (field 2) may hold spaces; fields after it are
	// counted from its closing parenthesis.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return p, errors.New("/proc stat: no command name")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state), so utime (14) and stime (15) are f[11], f[12].
	if len(f) < 13 {
		return p, errors.New("/proc stat: too few fields")
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return p, fmt.Errorf("/proc stat: %w", err)
	}
	p.cpuS = (ut + st) / ticks
	return p, nil
}

// logSummary counts a JSON log's lines by level and lists its distinct
// warning and error messages, for the bench's report on the daemon.
type logSummary struct {
	lines  int
	levels map[string]int
	issues map[string]int // "level: msg (error)" -> count
}

func summarizeLog(path string) (logSummary, error) {
	s := logSummary{levels: map[string]int{}, issues: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		return s, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		s.lines++
		var e map[string]any
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			s.levels["unparsed"]++
			s.issues["unparsed: "+truncate(sc.Text(), 160)]++
			continue
		}
		level, _ := e["level"].(string)
		s.levels[level]++
		if level == "warning" || level == "error" || level == "fatal" || level == "panic" {
			msg, _ := e["msg"].(string)
			if ev, ok := e["error"].(string); ok {
				msg += " (" + truncate(ev, 160) + ")"
			}
			s.issues[level+": "+msg]++
		}
	}
	return s, sc.Err()
}

func (s logSummary) String() string {
	var levels []string
	for l, n := range s.levels {
		levels = append(levels, fmt.Sprintf("%s %d", l, n))
	}
	sort.Strings(levels)
	out := fmt.Sprintf("%d lines (%s)", s.lines, strings.Join(levels, ", "))
	var issues []string
	for m, n := range s.issues {
		issues = append(issues, fmt.Sprintf("\n      %dx %s", n, m))
	}
	sort.Strings(issues)
	if len(issues) > 8 {
		issues = append(issues[:8], fmt.Sprintf("\n      … %d more distinct", len(issues)-8))
	}
	return out + strings.Join(issues, "")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// freeAddr returns a 127.0.0.1 address that was free a moment ago and that
// this bench has not handed out before.
func (b *bench) freeAddr() (string, error) {
	for range 100 {
		addr, err := testenv.FreeAddr()
		if err != nil {
			return "", err
		}
		if !b.ports[addr] {
			b.ports[addr] = true
			return addr, nil
		}
	}
	return "", errors.New("no unused free port")
}

// ownsMetricsAddr checks that the daemon itself listens on its metrics
// address: a port can be taken by another process between the moment it
// was found free and the daemon's bind, and the daemon only logs that. It
// looks for a listening socket on the port among the daemon's open files.
func (d *daemon) ownsMetricsAddr() error {
	if d.metrics == "" {
		return fmt.Errorf("%s (%s): no metrics server", d.role, d.phase)
	}
	_, p, err := net.SplitHostPort(d.metrics)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return err
	}
	tcp, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", d.Pid()))
	if err != nil {
		return err
	}
	sockets := listeningSockets(string(tcp), port)
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.Pid()))
	if err != nil {
		return err
	}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", d.Pid(), fd.Name()))
		if err == nil && sockets[link] {
			return nil
		}
	}
	if b, err := os.ReadFile(d.LogPath); err == nil && strings.Contains(string(b), "address already in use") {
		return fmt.Errorf("%s (%s): %w: %s", d.role, d.phase, errPortTaken, d.metrics)
	}
	return fmt.Errorf("%s (%s) does not listen on %s yet", d.role, d.phase, d.metrics)
}

// listeningSockets returns the "socket:[inode]" names of the sockets that
// listen on 127.0.0.1:port or *:port in /proc/net/tcp.
func listeningSockets(procNetTCP string, port int) map[string]bool {
	out := map[string]bool{}
	suffix := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(procNetTCP, "\n")[1:] {
		f := strings.Fields(line)
		// sl local_address rem_address st … inode (field 9)
		if len(f) < 10 || f[3] != "0A" || !strings.HasSuffix(f[1], suffix) {
			continue
		}
		if addr := strings.TrimSuffix(f[1], suffix); addr == "0100007F" || addr == "00000000" {
			out["socket:["+f[9]+"]"] = true
		}
	}
	return out
}
