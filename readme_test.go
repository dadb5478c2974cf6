package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// readmeSection returns the README's text from the heading title to the
// next heading of the same or a higher level.
func readmeSection(t *testing.T, title string) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start := strings.Index(s, title+"\n")
	if start < 0 {
		t.Fatalf("README has no heading %q", title)
	}
	level := strings.Count(strings.Fields(title)[0], "#")
	rest := s[start+len(title):]
	next := regexp.MustCompile(`(?m)^#{1,` + string(rune('0'+level)) + `} `).FindStringIndex(rest)
	if next == nil {
		return rest
	}
	return rest[:next[0]]
}

// table returns the markdown table of text whose header row starts with
// the cell head, up to its end.
func table(t *testing.T, text, head string) string {
	t.Helper()
	start := regexp.MustCompile(`(?m)^[ \t]*\| ` + regexp.QuoteMeta(head) + ` \|`).FindStringIndex(text)
	if start == nil {
		t.Fatalf("README has no table headed %q", head)
	}
	var rows []string
	for line := range strings.Lines(text[start[0]:]) {
		if !strings.HasPrefix(strings.TrimSpace(line), "|") {
			break
		}
		rows = append(rows, line)
	}
	return strings.Join(rows, "")
}

// firstColumn returns the `code` names in the first column of the
// markdown tables of text.
func firstColumn(text string) []string {
	var out []string
	for _, row := range regexp.MustCompile("(?m)^\\s*\\|([^|]*)\\|").FindAllStringSubmatch(text, -1) {
		for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(row[1], -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// TestReadmeTables keeps the README's reference tables true: the
// configuration table lists exactly Config's variables, the metrics table
// exactly the daemon's kube_secret_sync_ metrics, and the layout table
// every Go file of the daemon.
func TestReadmeTables(t *testing.T) {
	config := firstColumn(table(t, readmeSection(t, "## Configuration"), "variable"))
	for _, v := range configVars(t) {
		if !slices.Contains(config, v) {
			t.Errorf("README's configuration table lacks %s", v)
		}
	}
	for _, v := range config {
		if !slices.Contains(configVars(t), v) {
			t.Errorf("README's configuration table lists %s, which is no variable of Config", v)
		}
	}

	var documented []string
	for _, name := range firstColumn(table(t, readmeSection(t, "## Operations"), "metric")) {
		name, _, _ = strings.Cut(name, "{")
		documented = append(documented, "kube_secret_sync_"+name)
	}
	families, err := newMetrics().registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var exported []string
	for _, f := range families {
		if name := f.GetName(); strings.HasPrefix(name, "kube_secret_sync_") {
			exported = append(exported, name)
		}
	}
	// Vectors without children are not gathered: name them as well.
	exported = append(exported, "kube_secret_sync_build_info", "kube_secret_sync_writer_claim_remaining_seconds",
		"kube_secret_sync_rows_applied_total", "kube_secret_sync_row_errors_total", "kube_secret_sync_reconciles_total", "kube_secret_sync_reconcile_duration_seconds")
	for _, name := range exported {
		if !slices.Contains(documented, name) {
			t.Errorf("README's metrics table lacks %s", name)
		}
	}
	for _, name := range documented {
		if !slices.Contains(exported, name) {
			t.Errorf("README's metrics table lists %s, which the daemon does not export", name)
		}
	}

	layout := strings.Join(firstColumn(table(t, readmeSection(t, "## Development"), "file")), " ")
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") && !strings.Contains(layout, f) {
			t.Errorf("README's layout table lacks %s", f)
		}
	}
}
