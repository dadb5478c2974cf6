package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// cpuSnapshot is the CPU time used so far by every process on the machine,
// by pid: read at the start and at the end of a phase, it tells where the
// machine's cores went during it (the daemons, both API servers, etcd,
// PostgreSQL, the bench itself) without sampling while it runs.
type cpuSnapshot map[int]procCPU

type procCPU struct {
	comm string
	// started is the process's start time (field 22), which tells a pid
	// reused meanwhile from the same process.
	started uint64
	cpuS    float64
}

// takeCPUSnapshot reads /proc/<pid>/stat of every process. A process that
// vanishes meanwhile is left out.
func takeCPUSnapshot() cpuSnapshot {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	snap := cpuSnapshot{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		if p, ok := parseStatCPU(string(stat), clockTicks); ok {
			snap[pid] = p
		}
	}
	return snap
}

// parseStatCPU reads the command name (field 2, in parentheses, which may
// hold spaces), utime + stime (fields 14 and 15) and the start time (field
// 22) of a /proc/<pid>/stat.
func parseStatCPU(stat string, ticks float64) (procCPU, bool) {
	open, closing := strings.IndexByte(stat, '('), strings.LastIndexByte(stat, ')')
	if open < 0 || closing < open {
		return procCPU{}, false
	}
	// fields[0] is field 3 (state), so field n is fields[n-3].
	fields := strings.Fields(stat[closing+1:])
	if len(fields) < 20 {
		return procCPU{}, false
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	started, err3 := strconv.ParseUint(fields[19], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procCPU{}, false
	}
	return procCPU{comm: stat[open+1 : closing], started: started, cpuS: (utime + stime) / ticks}, true
}

// cpuUse is one process's CPU time within a phase.
type cpuUse struct {
	name string
	cpuS float64
}

// cpuSince is the CPU time used since before, largest first: by
// names[pid] for the processes named there, and by command name for the
// others (PostgreSQL's backends add up as "postgres", the kernel's workers
// as "kworker"); what is below
// 0.05 s is summed as "other". A process started meanwhile counts from
// zero; one that exited meanwhile is not seen.
func cpuSince(before, after cpuSnapshot, names map[int]string) []cpuUse {
	byName := map[string]float64{}
	for pid, a := range after {
		used := a.cpuS
		if b, seen := before[pid]; seen && b.started == a.started {
			used -= b.cpuS
		}
		name := a.comm
		if strings.HasPrefix(name, "kworker/") {
			name = "kworker" // named after the work queue it serves now
		}
		byName[cmp.Or(names[pid], name)] += used
	}
	var out []cpuUse
	other := 0.0
	for name, used := range byName {
		if used < 0.05 {
			other += max(used, 0)
			continue
		}
		out = append(out, cpuUse{name, used})
	}
	slices.SortFunc(out, func(x, y cpuUse) int { return cmp.Or(cmp.Compare(y.cpuS, x.cpuS), cmp.Compare(x.name, y.name)) })
	if other > 0 {
		out = append(out, cpuUse{"other", other})
	}
	return out
}

// formatCPUUse renders uses as "name 1.23s, ..." with the total first.
func formatCPUUse(uses []cpuUse) string {
	total := 0.0
	parts := make([]string, 0, len(uses))
	for _, u := range uses {
		total += u.cpuS
		parts = append(parts, fmt.Sprintf("%s %.2fs", u.name, u.cpuS))
	}
	return fmt.Sprintf("total %.2fs: %s", total, strings.Join(parts, ", "))
}

// apiRequests is the count of requests an API server served, by verb and
// resource (a watch counts when it ends), of watch events it sent and of
// watches it closed on a slow client, by resource (its own
// apiserver_request_total, apiserver_watch_events_total and
// apiserver_terminated_watchers_total).
func apiRequests(ctx context.Context, c *testenv.Cluster) (map[string]float64, error) {
	b, err := c.Clientset.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s /metrics: %w", c.Name, err)
	}
	out := map[string]float64{}
	for _, s := range parseSamples(string(b)) {
		switch s.name {
		case "apiserver_request_total":
			r := s.labels["resource"]
			if sub := s.labels["subresource"]; sub != "" {
				r += "/" + sub
			}
			out[s.labels["verb"]+" "+r] += s.value
		case "apiserver_watch_events_total":
			out["watch-event "+s.labels["resource"]] += s.value
		case "apiserver_terminated_watchers_total":
			// Closed by the server because the client read too slowly.
			out["terminated-watch "+s.labels["resource"]] += s.value
		}
	}
	return out, nil
}

// formatRequestsSince renders what after counts beyond before, largest
// first, leaving out what did not grow.
func formatRequestsSince(before, after map[string]float64) string {
	type count struct {
		what string
		n    float64
	}
	var grew []count
	for what, n := range after {
		if d := n - before[what]; d > 0 {
			grew = append(grew, count{what, d})
		}
	}
	slices.SortFunc(grew, func(x, y count) int { return cmp.Or(cmp.Compare(y.n, x.n), cmp.Compare(x.what, y.what)) })
	parts := make([]string, 0, len(grew))
	for _, c := range grew {
		parts = append(parts, fmt.Sprintf("%s %.0f", c.what, c.n))
	}
	return strings.Join(parts, ", ")
}
