package main

import (
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// rulesFile is the PrometheusRule that deploy/ and the chart ship (the
// deploy tests keep the chart's equal to it).
const rulesFile = "deploy/monitoring/prometheusrule.yaml"

// alertNames are the alerts the rules define, each checked in every case.
var alertNames = []string{"KubeSecretSyncStalled", "KubeSecretSyncRowErrors", "KubeSecretSyncFollowerLag", "KubeSecretSyncNoWriter"}

// TestAlertRules evaluates the shipped alerting rules with Prometheus's own
// promtool against the real metrics of two replicas of a leader and two of
// a follower (one of each holding the Lease, the other on standby), as
// scraped, and against the same with one fault each. Healthy, no alert
// fires, although each standby exports last_success_timestamp_seconds 0
// and active 0; with a fault, its alert fires for the replica at fault
// only. promtool check rules parses every expression and template first.
func TestAlertRules(t *testing.T) {
	testenv.SkipShort(t)
	promtool, err := testenv.Promtool()
	if err != nil {
		testenv.Missing(t, err)
	}
	dir := t.TempDir()
	full, rules := filepath.Join(dir, "full.yaml"), filepath.Join(dir, "rules.yaml")
	writeRules(t, full, rules)
	if out, err := exec.Command(promtool, "check", "rules", full).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}

	e := newSyncEnv(t)
	var replicas []*daemon
	var names []string
	for _, leader := range []bool{true, false} {
		for i := range 2 {
			cfg := e.config(leader)
			cfg.PodName = fmt.Sprintf("%s-%d", strings.TrimSuffix(cfg.PodName, "-0"), i)
			replicas = append(replicas, e.start(cfg))
			names = append(names, cfg.PodName)
		}
	}
	mustCreate(t, e.secrets(e.leader), labelled("alerted", nil))
	e.waitSynced("alerted")
	// One replica of each holds the Lease and has finished a full pass
	// (the follower's database_version is set by it).
	var activeLeader, activeFollower string
	eventually(t, syncTimeout, func() error {
		activeLeader, activeFollower = "", ""
		for i, d := range replicas {
			if d.metric(t, "kube_secret_sync_active") == 1 && d.metric(t, "kube_secret_sync_database_version") >= 1 {
				if i < 2 {
					activeLeader = names[i]
				} else {
					activeFollower = names[i]
				}
			}
		}
		if activeLeader == "" || activeFollower == "" {
			return fmt.Errorf("active leader %q, follower %q after a full pass", activeLeader, activeFollower)
		}
		return nil
	})
	scraped := map[string][]series{}
	for i, d := range replicas {
		scraped[names[i]] = scrape(t, d.metrics, names[i])
	}

	// A change sets metric (with labels, or added with them if the replica
	// has no such series) to values, a promtool series.
	type change struct{ metric, labels, values string }
	type fault struct {
		name    string
		replica string
		changes []change
		fires   string // the alert that must fire for replica
		labels  string // the labels of the alert beyond the target's
	}
	last := "kube_secret_sync_last_success_timestamp_seconds"
	cursor := replicas[slices.Index(names, activeFollower)].metric(t, "kube_secret_sync_cursor_version")
	cases := []fault{
		{name: "as scraped"},
		{"leader stalled", activeLeader, []change{{last, "", "0x40"}}, "KubeSecretSyncStalled", ""},
		{"follower stalled", activeFollower, []change{{last, "", "0x40"}}, "KubeSecretSyncStalled", ""},
		{"row errors", activeFollower, []change{{"kube_secret_sync_row_errors_total", `reason="tampered"`, "0+1x40"}}, "KubeSecretSyncRowErrors", `reason="tampered"`},
		{"follower behind", activeFollower, []change{{"kube_secret_sync_database_version", "", fmt.Sprintf("%gx40", cursor+3)}}, "KubeSecretSyncFollowerLag", ""},
		// A leader on standby (failover) whose writer's claim expired.
		{"no writer", activeLeader, []change{{"kube_secret_sync_writer", "", "0x40"}, {"kube_secret_sync_writer_claim_remaining_seconds", "", "-5x40"}}, "KubeSecretSyncNoWriter", ""},
	}
	// The same faults on the standby replicas fire nothing: a standby has
	// no loop to stall and no cursor to move.
	for _, standby := range names {
		if standby == activeLeader || standby == activeFollower {
			continue
		}
		cases = append(cases,
			fault{"standby stalled", standby, []change{{last, "", "0x40"}}, "", ""},
			fault{"standby behind", standby, []change{{"kube_secret_sync_database_version", "", "1000x40"}}, "", ""},
			fault{"standby without writer", standby, []change{{"kube_secret_sync_writer_claim_remaining_seconds", "", "-5x40"}}, "", ""})
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name+" "+c.replica, " ", "_"), func(t *testing.T) {
			var input []map[string]string
			for _, name := range slices.Sorted(maps.Keys(scraped)) {
				done := map[int]bool{}
				for _, sr := range scraped[name] {
					values := sr.values
					for i, ch := range c.changes {
						if name == c.replica && sr.metric == ch.metric && strings.Contains(sr.selector, ch.labels) {
							values, done[i] = ch.values, true
						}
					}
					input = append(input, map[string]string{"series": sr.metric + sr.selector, "values": values})
				}
				for i, ch := range c.changes {
					if name == c.replica && !done[i] {
						input = append(input, map[string]string{"series": ch.metric + targetLabels(name, ch.labels), "values": ch.values})
					}
				}
			}
			var checks []map[string]any
			for _, alert := range alertNames {
				exp := []map[string]any{}
				if alert == c.fires {
					labels := map[string]string{"severity": severity(t, alert), "job": "kube-secret-sync", "instance": c.replica, "namespace": "kube-secret-sync", "pod": c.replica}
					if c.labels != "" {
						k, v, _ := strings.Cut(c.labels, "=")
						labels[k] = strings.Trim(v, `"`)
					}
					exp = append(exp, map[string]any{"exp_labels": labels})
				}
				checks = append(checks, map[string]any{"eval_time": "30m", "alertname": alert, "exp_alerts": exp})
			}
			test := map[string]any{
				"rule_files":          []string{rules},
				"evaluation_interval": "1m",
				"tests":               []map[string]any{{"interval": "1m", "input_series": input, "alert_rule_test": checks}},
			}
			b, err := yaml.Marshal(test)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "test.yaml")
			if err := os.WriteFile(file, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(promtool, "test", "rules", file).CombinedOutput(); err != nil {
				t.Errorf("promtool test rules (%s on %q): %v\n%s", c.name, c.replica, err, out)
			}
		})
	}
}

// series is one scraped sample as a promtool input series.
type series struct {
	metric, selector, values string
}

// scrape reads the kube_secret_sync_ counters and gauges of the daemon at
// addr as series of 40 one-minute samples, labelled as Prometheus would
// label the target (job, instance, namespace, pod). Time 0 is the scrape:
// a last-success timestamp becomes how far it is behind, and one that is
// current moves with time, as it does while passes succeed.
func scrape(t *testing.T, addr, pod string) []series {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out []series
	for name, f := range families {
		if !strings.HasPrefix(name, "kube_secret_sync_") || (f.GetType() != dto.MetricType_GAUGE && f.GetType() != dto.MetricType_COUNTER) {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			values := strconv.FormatFloat(v, 'f', -1, 64) + "x40"
			if name == "kube_secret_sync_last_success_timestamp_seconds" && v != 0 {
				values = "0+60x40"
			}
			out = append(out, series{name, targetLabels(pod, labels...), values})
		}
	}
	return out
}

// targetLabels is the selector of a series of pod with more labels.
func targetLabels(pod string, more ...string) string {
	labels := append([]string{`job="kube-secret-sync"`, fmt.Sprintf("instance=%q", pod), `namespace="kube-secret-sync"`, fmt.Sprintf("pod=%q", pod)}, more...)
	return "{" + strings.Join(slices.DeleteFunc(labels, func(s string) bool { return s == "" }), ",") + "}"
}

// writeRules writes the PrometheusRule's groups as a Prometheus rules file
// to full, and without the annotations to bare: promtool check rules checks
// their templates, and test rules compares the labels of what fires.
func writeRules(t *testing.T, full, bare string) {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Spec struct {
			Groups []map[string]any `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &rule); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range rule.Spec.Groups {
		for _, r := range g["rules"].([]any) {
			names = append(names, r.(map[string]any)["alert"].(string))
		}
	}
	if !slices.Equal(slices.Sorted(slices.Values(names)), slices.Sorted(slices.Values(alertNames))) {
		t.Fatalf("%s defines the alerts %v; this test checks %v", rulesFile, names, alertNames)
	}
	write := func(file string) {
		b, err := yaml.Marshal(map[string]any{"groups": rule.Spec.Groups})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(full)
	for _, g := range rule.Spec.Groups {
		for _, r := range g["rules"].([]any) {
			delete(r.(map[string]any), "annotations")
		}
	}
	write(bare)
}

// severity is the severity label of alert in rulesFile.
func severity(t *testing.T, alert string) string {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "alert: "+alert+"\n")
	_, after, ok2 := strings.Cut(after, "severity: ")
	if !ok || !ok2 {
		t.Fatalf("no severity for %s in %s", alert, rulesFile)
	}
	return strings.Fields(after)[0]
}
