package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// report is bench/results.json.
type report struct {
	Date     string   `json:"date"`
	Cores    int      `json:"cores"`
	Machine  string   `json:"machine"`
	Go       string   `json:"go"`
	Command  string   `json:"command"`
	Binary   string   `json:"binary_version"`
	Settings any      `json:"binary_defaults"`
	Method   []string `json:"method"`
	Notes    []string `json:"notes,omitempty"`
	Results  []result `json:"results"`
}

// result is one workload. The first keys are those of issue 5; a figure
// that was not measured (phase skipped or failed) is null.
type result struct {
	N                int      `json:"n"`
	InitialSyncS     *float64 `json:"initial_sync_s"`
	Ratio            *float64 `json:"ratio"` // initial sync / unthrottled writer
	IdleDBRowWrites  *int64   `json:"idle_db_row_writes"`
	IdleAPIWrites    *int64   `json:"idle_api_writes"`
	LatencyP50Ms     *float64 `json:"latency_p50_ms"`
	LatencyP99Ms     *float64 `json:"latency_p99_ms"`
	LeaderRSSMiB     *float64 `json:"leader_rss_mib"`
	FollowerRSSMiB   *float64 `json:"follower_rss_mib"`
	LeaderCPUS       *float64 `json:"leader_cpu_s"`
	FollowerCPUS     *float64 `json:"follower_cpu_s"`
	LatencyNohintP50 *float64 `json:"latency_nohint_p50_ms"`
	LatencyNohintP99 *float64 `json:"latency_nohint_p99_ms"`

	// Extra keys.
	Namespaces               int      `json:"namespaces"`
	DBRTTMs                  *float64 `json:"db_rtt_ms,omitempty"` // set when the daemons reach the database through a delaying proxy
	PollS                    *float64 `json:"poll_seconds"`        // the binary's POLL_SECONDS default
	SecretDataBytes          float64  `json:"secret_data_bytes"`
	UnthrottledWriteS        *float64 `json:"unthrottled_write_s"`           // until a watch saw every Secret, as the initial sync is timed: the mean of before and after the sync
	UnthrottledWriteBeforeS  *float64 `json:"unthrottled_write_before_s"`    // that writer before the sync
	UnthrottledWriteAfterS   *float64 `json:"unthrottled_write_after_s"`     // that writer after the sync
	UnwatchedWriteS          *float64 `json:"unthrottled_write_unwatched_s"` // no watch running, until its calls returned
	RatioUnwatched           *float64 `json:"ratio_unwatched"`               // initial sync / unwatched writer
	WriterClientCPUMs        *float64 `json:"unwatched_writer_client_cpu_ms_per_secret"`
	UnthrottledWorkers       *int     `json:"unthrottled_write_workers"`
	InitialSync429s          *int64   `json:"initial_sync_api_429s"`
	InitialSyncErrors        *int64   `json:"initial_sync_error_log_lines"`
	LeaderCPUSyncS           *float64 `json:"leader_cpu_initial_sync_s"`
	FollowerCPUSyncS         *float64 `json:"follower_cpu_initial_sync_s"`
	LeaderRSSAllRunsMiB      *float64 `json:"leader_rss_all_runs_mib"`
	FollowerRSSAllRunsMiB    *float64 `json:"follower_rss_all_runs_mib"`
	IdleTickS                *int     `json:"idle_tick_s"`
	IdleWindowS              *float64 `json:"idle_window_s"`
	IdleFullPassesLeader     *int64   `json:"idle_full_passes_leader"`
	IdleFullPassesFollow     *int64   `json:"idle_full_passes_follower"`
	IdleVerifiedAfterPasses  *int64   `json:"idle_leader_verified_after_passes"`
	IdleDBRowsChanged        *int64   `json:"idle_db_rows_changed"`
	IdleClaimRenewals        *int64   `json:"idle_claim_renewals"`
	IdleDBBytesPerPassLeader *int64   `json:"idle_db_bytes_per_pass_leader"`
	IdleDBBytesPerPassFollow *int64   `json:"idle_db_bytes_per_pass_follower"`
	LatencyUpdates           *int     `json:"latency_updates"`
	LatencyMaxMs             *float64 `json:"latency_max_ms"`
	LatencyNohintMaxMs       *float64 `json:"latency_nohint_max_ms"`
	UnlabelledSecrets        *int     `json:"unlabelled_secrets"`
	LeaderRSSUnlabelled      *float64 `json:"leader_rss_unlabelled_delta_mib"`
	LeaderRSSLabelled        *float64 `json:"leader_rss_labelled_delta_mib"`
	LeaderRSSNoneMiB         *float64 `json:"leader_rss_no_labelled_mib"`
	Errors                   []string `json:"errors,omitempty"`
}

func ptr[T any](v T) *T { return &v }

// round returns a pointer to v rounded to digits decimals.
func round(v float64, digits int) *float64 {
	p := math.Pow(10, float64(digits))
	return ptr(math.Round(v*p) / p)
}

// machine describes this machine in one line.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown kernel"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = "Linux " + strings.TrimSpace(string(b))
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %f kB", &kb); err == nil {
			mem = fmt.Sprintf(", %.0f GiB RAM", kb/(1<<20))
		}
	}
	return fmt.Sprintf("%s, %d × %s%s, %s/%s", kernel, runtime.NumCPU(), cpu, mem, runtime.GOOS, runtime.GOARCH)
}

// loadavg is /proc/loadavg's first three numbers.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func (r *report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// row is one line of the markdown table.
type row struct {
	label, target string
	cell          func(r *result) string
}

func f1(v *float64, unit string) string {
	if v == nil {
		return "–"
	}
	return fmt.Sprintf("%.1f%s", *v, unit)
}

func f2(v *float64, unit string) string {
	if v == nil {
		return "–"
	}
	return fmt.Sprintf("%.2f%s", *v, unit)
}

func i0(v *int64) string {
	if v == nil {
		return "–"
	}
	return fmt.Sprint(*v)
}

// verdict appends ok or FAIL to a cell whose target applies.
func verdict(cell string, applies, ok bool) string {
	if !applies || cell == "–" {
		return cell
	}
	if ok {
		return cell + " ok"
	}
	return cell + " **FAIL**"
}

func le(v *float64, limit float64) bool { return v != nil && *v <= limit }

// tableRows are the table's rows, with the targets of issue 5.
func tableRows() []row {
	return []row{
		{"initial sync (s)", "", func(r *result) string { return f2(r.InitialSyncS, "") }},
		{"unthrottled writer (s): mean of before and after the sync", "", func(r *result) string { return f2(r.UnthrottledWriteS, "") }},
		{"unthrottled writer before / after the sync (s)", "", func(r *result) string {
			return f2(r.UnthrottledWriteBeforeS, "") + " / " + f2(r.UnthrottledWriteAfterS, "")
		}},
		{"unthrottled writer with no watch running (s)", "", func(r *result) string { return f2(r.UnwatchedWriteS, "") }},
		{"ratio sync / unthrottled writer", "≤ 1.5 at N ≥ 10,000", func(r *result) string {
			return verdict(f2(r.Ratio, ""), r.N >= 10000, le(r.Ratio, 1.5))
		}},
		{"ratio sync / unthrottled writer with no watch running", "", func(r *result) string { return f2(r.RatioUnwatched, "") }},
		{"API 429s in initial sync (retried)", "", func(r *result) string { return i0(r.InitialSync429s) }},
		{"daemon error lines in initial sync", "0", func(r *result) string {
			return verdict(i0(r.InitialSyncErrors), true, r.InitialSyncErrors != nil && *r.InitialSyncErrors == 0)
		}},
		{"idle DB row writes", "0", func(r *result) string {
			return verdict(i0(r.IdleDBRowWrites), true, r.IdleDBRowWrites != nil && *r.IdleDBRowWrites == 0)
		}},
		{"idle writer-claim renewals (not row writes)", "", func(r *result) string { return i0(r.IdleClaimRenewals) }},
		{"leader full passes until every row verified after a start", "", func(r *result) string { return i0(r.IdleVerifiedAfterPasses) }},
		{"idle DB bytes read per full pass, leader (KiB)", "≤ 64 at N = 100,000", func(r *result) string {
			return verdict(kib(r.IdleDBBytesPerPassLeader), r.N >= 100000, r.IdleDBBytesPerPassLeader != nil && *r.IdleDBBytesPerPassLeader <= 64<<10)
		}},
		{"idle DB bytes read per full pass, follower (KiB)", "≤ 64 at N = 100,000", func(r *result) string {
			return verdict(kib(r.IdleDBBytesPerPassFollow), r.N >= 100000, r.IdleDBBytesPerPassFollow != nil && *r.IdleDBBytesPerPassFollow <= 64<<10)
		}},
		{"idle API writes", "0", func(r *result) string {
			return verdict(i0(r.IdleAPIWrites), true, r.IdleAPIWrites != nil && *r.IdleAPIWrites == 0)
		}},
		{"latency p50 (ms), defaults", "", func(r *result) string { return f1(r.LatencyP50Ms, "") }},
		{"latency p99 (ms), defaults", "≤ 1000 (+ 2 DB round trips)", func(r *result) string {
			return verdict(f1(r.LatencyP99Ms, ""), true, le(r.LatencyP99Ms, 1000+r.twoRTTMs()))
		}},
		{"latency p50 (ms), PG_NOTIFY=0", "", func(r *result) string { return f1(r.LatencyNohintP50, "") }},
		{"latency p99 (ms), PG_NOTIFY=0", "≤ POLL_SECONDS + 500 (+ 2 DB round trips)", func(r *result) string {
			return verdict(f1(r.LatencyNohintP99, ""), r.PollS != nil, r.PollS != nil && le(r.LatencyNohintP99, *r.PollS*1000+500+r.twoRTTMs()))
		}},
		{"leader peak RSS (MiB)", "≤ 256 at N = 100,000", func(r *result) string {
			return verdict(f1(r.LeaderRSSMiB, ""), r.N >= 100000, le(r.LeaderRSSMiB, 256))
		}},
		{"follower peak RSS (MiB)", "≤ 256 at N = 100,000", func(r *result) string {
			return verdict(f1(r.FollowerRSSMiB, ""), r.N >= 100000, le(r.FollowerRSSMiB, 256))
		}},
		{"leader CPU per synced Secret in initial sync (ms)", "≤ 0.1 at N = 10,000", func(r *result) string {
			return perSecret(r.LeaderCPUSyncS, r.N, 0.1, r.N == 10000)
		}},
		{"follower CPU per synced Secret in initial sync (ms)", "≤ 0.3 at N = 10,000", func(r *result) string {
			return perSecret(r.FollowerCPUSyncS, r.N, 0.3, r.N == 10000)
		}},
		{"the unthrottled writer's own client CPU per Secret, no watch (ms)", "", func(r *result) string {
			if r.WriterClientCPUMs == nil {
				return "–"
			}
			return fmt.Sprintf("%.3f", *r.WriterClientCPUMs)
		}},
		{"follower CPU per Secret in initial sync / the writer's client's", "", func(r *result) string {
			if r.WriterClientCPUMs == nil || r.FollowerCPUSyncS == nil || r.N == 0 || *r.WriterClientCPUMs == 0 {
				return "–"
			}
			return fmt.Sprintf("%.2f", *r.FollowerCPUSyncS*1000/float64(r.N) / *r.WriterClientCPUMs)
		}},
		{"leader CPU (s)", "", func(r *result) string { return f1(r.LeaderCPUS, "") }},
		{"follower CPU (s)", "", func(r *result) string { return f1(r.FollowerCPUS, "") }},
		{"leader CPU in initial sync (s)", "", func(r *result) string { return f1(r.LeaderCPUSyncS, "") }},
		{"follower CPU in initial sync (s)", "", func(r *result) string { return f1(r.FollowerCPUSyncS, "") }},
		{"leader RSS: N labelled vs none (MiB)", "", func(r *result) string { return signed(r.LeaderRSSLabelled) }},
		{"leader RSS: + unlabelled Secrets (MiB)", "small", func(r *result) string {
			s := signed(r.LeaderRSSUnlabelled)
			if r.UnlabelledSecrets != nil && s != "–" {
				s += fmt.Sprintf(" (%d)", *r.UnlabelledSecrets)
			}
			return s
		}},
	}
}

func signed(v *float64) string {
	if v == nil {
		return "–"
	}
	return fmt.Sprintf("%+.1f", *v)
}

// writeTable prints the results as a markdown table, one column per N.
func (r *report) writeTable(w io.Writer) {
	results := slices.Clone(r.Results)
	// By N; a remote-database variant after the local one (appended later).
	slices.SortStableFunc(results, func(a, b result) int { return a.N - b.N })
	fmt.Fprint(w, "| metric | target |")
	for _, res := range results {
		fmt.Fprintf(w, " %s |", res.label())
	}
	fmt.Fprint(w, "\n|---|---|")
	for range results {
		fmt.Fprint(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, rw := range tableRows() {
		fmt.Fprintf(w, "| %s | %s |", rw.label, rw.target)
		for i := range results {
			fmt.Fprintf(w, " %s |", rw.cell(&results[i]))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%s, %s. Binary %s. Go %s.\n", r.Date, r.Machine, r.Binary, r.Go)
	for _, m := range r.Method {
		fmt.Fprintf(w, "- %s\n", m)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "- Note: %s\n", n)
	}
	for _, res := range results {
		for _, e := range res.Errors {
			fmt.Fprintf(w, "- %s: %s\n", res.label(), e)
		}
	}
}

func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

// percentile is the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// label names the result's column: its N, and the database's distance if
// it was made remote.
func (r *result) label() string {
	if r.DBRTTMs != nil {
		return fmt.Sprintf("N = %s, DB %g ms away", thousands(r.N), *r.DBRTTMs)
	}
	return "N = " + thousands(r.N)
}

// twoRTTMs is two round trips to the database, in milliseconds: what a
// remote database may add to a propagation.
func (r *result) twoRTTMs() float64 {
	if r.DBRTTMs == nil {
		return 0
	}
	return 2 * *r.DBRTTMs
}

// kib formats a byte count in KiB.
func kib(v *int64) string {
	if v == nil {
		return "–"
	}
	return fmt.Sprintf("%.1f", float64(*v)/1024)
}

// perSecret is cpu seconds over n Secrets, in ms, checked against limit
// where check.
func perSecret(cpu *float64, n int, limit float64, check bool) string {
	if n == 0 || cpu == nil {
		return "–"
	}
	ms := *cpu * 1000 / float64(n)
	return verdict(fmt.Sprintf("%.3f", ms), check, ms <= limit)
}
