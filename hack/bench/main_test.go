package main

import (
	"crypto/tls"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// The bench's figures rest on these parsers: one that misreads a line
// would report a wrong number without any error.

func TestParseHelp(t *testing.T) {
	help := `kube-secret-sync v1 keeps labelled Secrets identical

Usage:
  kube-secret-sync              run the daemon (leader or follower)
  kube-secret-sync keygen       print a fresh random key for ENCRYPTION_KEY

It is configured by environment variables only:

  DSN                       PostgreSQL/CockroachDB connection string (pgx syntax); required
  TICK_SECONDS              seconds between full reconciles (default 20)
  POLL_SECONDS              follower: seconds between pulls of changed rows (at most TICK_SECONDS) (default 1)
  KUBE_QPS                  Kubernetes API client queries per second (default 100)
  KUBE_BURST                Kubernetes API client burst (default 200)
  APPLY_WORKERS             follower: Secrets applied concurrently (default 8)
  NAMESPACES                comma-separated namespaces to sync (default: all)
  PG_NOTIFY                 PostgreSQL only: LISTEN/NOTIFY wake-up hint (default true)
`
	s := parseHelp(help)
	want := map[string]string{"TICK_SECONDS": "20", "POLL_SECONDS": "1", "KUBE_QPS": "100", "KUBE_BURST": "200", "APPLY_WORKERS": "8", "PG_NOTIFY": "true"}
	if !maps.Equal(s.defaults, want) {
		t.Errorf("parseHelp defaults = %v; want %v", s.defaults, want)
	}
	for _, name := range []string{"DSN", "NAMESPACES", "PG_NOTIFY"} {
		if !s.listed[name] {
			t.Errorf("parseHelp: %s not listed", name)
		}
	}
	if s.listed["It"] || s.listed["Usage"] {
		t.Errorf("parseHelp listed prose: %v", s.listed)
	}
}

func TestCountWrites(t *testing.T) {
	exposition := `# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="secrets",scope="resource",subresource="",verb="POST",version="v1"} 12
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="secrets",scope="resource",subresource="",verb="PUT",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="secrets",scope="namespace",subresource="",verb="LIST",version="v1"} 40
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 99
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="events",scope="resource",subresource="",verb="POST",version="v1"} 5
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="namespaces",scope="resource",subresource="status",verb="PATCH",version="v1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="configmaps",scope="resource",subresource="",verb="APPLY",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="secrets",scope="resource",subresource="",verb="DELETE",version="v1"} 1e+00
apiserver_request_duration_seconds_bucket{verb="POST",resource="secrets",le="0.1"} 7
`
	w := countWrites(parseSamples(exposition))
	if got := w.sync(); got != 12+3+1+2+1 {
		t.Errorf("sync writes = %g; want 19 (secrets, configmaps, namespaces; not leases, events or reads)", got)
	}
	before := apiWrites{"secrets POST": 10, "leases PUT": 90}
	d := w.diff(before)
	if d["secrets POST"] != 2 || d["leases PUT"] != 9 || d["secrets PUT"] != 3 {
		t.Errorf("diff = %v", d)
	}
}

func TestParseSampleEscapes(t *testing.T) {
	s, ok := parseSample(`m{a="x\"y,z",b="\\"} 4 1700000000`)
	if !ok || s.name != "m" || s.labels["a"] != `x"y,z` || s.labels["b"] != `\` || s.value != 4 {
		t.Errorf("parseSample = %+v, %v", s, ok)
	}
	if s, ok := parseSample("go_goroutines 17"); !ok || s.value != 17 || len(s.labels) != 0 {
		t.Errorf("parseSample(unlabelled) = %+v, %v", s, ok)
	}
	for _, bad := range []string{"# TYPE x counter", "", `m{a="unterminated} 1`, "m{} NaNa"} {
		if _, ok := parseSample(bad); ok {
			t.Errorf("parseSample(%q) accepted", bad)
		}
	}
}

func TestParseProc(t *testing.T) {
	status := "Name:\tkube-secret-sync\nVmPeak:\t 1300000 kB\nVmHWM:\t   61440 kB\nVmRSS:\t   51200 kB\n"
	// A command name with a space and a parenthesis, as /proc allows.
	stat := "4242 (kube (secret) sync) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 12 0 100 1300000000 12800 18446744073709551615"
	p, err := parseProc(status, stat, 100)
	if err != nil {
		t.Fatal(err)
	}
	if p.hwmMiB != 60 || p.rssMiB != 50 || p.cpuS != 3 {
		t.Errorf("parseProc = %+v; want HWM 60 MiB, RSS 50 MiB, CPU 3s", p)
	}
	if _, err := parseProc("VmRSS:\t1 kB\n", stat, 100); err == nil {
		t.Error("parseProc without VmHWM: no error")
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 200; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{50, 100 * time.Millisecond}, {99, 198 * time.Millisecond}, {100, 200 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(d, tt.p); got != tt.want {
			t.Errorf("percentile(1..200 ms, %g) = %s; want %s", tt.p, got, tt.want)
		}
	}
}

func TestTracker(t *testing.T) {
	tr := &tracker{want: map[key]digest{}, have: map[key]digest{}, waiters: map[key][]chan struct{}{}}
	secret := func(ns, name, crt string) *corev1.Secret {
		s := &corev1.Secret{Type: corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": []byte(crt)}}
		s.Namespace, s.Name = ns, name
		return s
	}
	// observe hands the tracker what the informer's transform makes of
	// the copy's metadata, annotated as the bench annotates its sources.
	meta := func(s *corev1.Secret) *metav1.PartialObjectMetadata {
		digestAnnotated(s)
		return slim(&metav1.PartialObjectMetadata{ObjectMeta: s.ObjectMeta})
	}
	observe := func(s *corev1.Secret) { tr.observe(meta(s), false) }
	a, b := secret("ns", "a", "1"), secret("ns", "b", "1")
	observe(a) // present before anything is expected
	all := tr.expectAll([]*corev1.Secret{a, b})
	if isClosed(all) {
		t.Fatal("all closed with b missing")
	}
	observe(secret("ns", "b", "stale"))
	if isClosed(all) {
		t.Fatal("all closed with b different")
	}
	unannotated := secret("ns", "b", "1")
	tr.observe(slim(&metav1.PartialObjectMetadata{ObjectMeta: unannotated.ObjectMeta}), false)
	if isClosed(all) {
		t.Fatal("all closed with b's copy lacking the digest annotation")
	}
	observe(b)
	if !isClosed(all) {
		t.Fatal("all not closed with a and b equal")
	}
	a2 := secret("ns", "a", "2")
	ch := tr.expect(key{"ns", "a"}, digestOf(a2.Type, a2.Data))
	if isClosed(ch) {
		t.Fatal("update seen before it landed")
	}
	if m, n, _ := tr.progress(); m != 1 || n != 2 {
		t.Errorf("progress = %d/%d; want 1/2", m, n)
	}
	observe(a2)
	if !isClosed(ch) {
		t.Fatal("update not seen")
	}
	tr.observe(meta(a2), true)
	if m, _, present := tr.progress(); m != 1 || present != 1 {
		t.Errorf("after delete: matched %d, present %d; want 1, 1", m, present)
	}
}

// TestVerifyCopies: the check after the timed window compares the copies'
// data, whatever their annotations say.
func TestVerifyCopies(t *testing.T) {
	secret := func(ns, name, crt string) *corev1.Secret {
		s := &corev1.Secret{Type: corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": []byte(crt)}}
		s.Namespace, s.Name, s.Labels = ns, name, map[string]string{managedLabel: "true"}
		digestAnnotated(s)
		return s
	}
	a, b, c := secret("ns", "a", "1"), secret("ns", "b", "1"), secret("ns", "c", "1")
	forged := b.DeepCopy()
	forged.Data["tls.crt"] = []byte("other") // annotation still says "1"
	client := fake.NewClientset(a, forged, secret("ns", "unwanted", "x"))
	tr := &tracker{want: map[key]digest{}, have: map[key]digest{}, waiters: map[key][]chan struct{}{}}
	tr.expectAll([]*corev1.Secret{a, b, c})
	bad, some, err := tr.verifyCopies(t.Context(), client)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"ns/b (data differs)", "ns/c (missing)"}; bad != 2 || !slices.Equal(some, want) {
		t.Errorf("verifyCopies = %d, %q; want 2, %q", bad, some, want)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestTLSData(t *testing.T) {
	data, err := tlsData("ns-001")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(data["tls.crt"], data["tls.key"]); err != nil {
		t.Errorf("tls.crt and tls.key do not match: %v", err)
	}
	size := 0
	for _, v := range data {
		size += len(v)
	}
	if size < 1800 || size > 2400 {
		t.Errorf("data is %d bytes; want about 2 KiB", size)
	}
	crt, err := renewedCert("ns-001", data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(crt, data["tls.key"]); err != nil {
		t.Errorf("renewed tls.crt does not match tls.key: %v", err)
	}
	if string(crt) == string(data["tls.crt"]) {
		t.Error("renewed tls.crt is the old one")
	}
	other, _ := tlsData("ns-001")
	if digestOf(corev1.SecretTypeTLS, data) == digestOf(corev1.SecretTypeTLS, other) {
		t.Error("two Secrets have the same digest")
	}
}

func TestListeningSockets(t *testing.T) {
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:7048 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:7048 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
   2: 00000000:7049 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0
   3: 0A000001:7048 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0000000000000000 100 0 0 10 0
`
	got := listeningSockets(tcp, 0x7048)
	want := map[string]bool{"socket:[111]": true}
	if !maps.Equal(got, want) {
		t.Errorf("listeningSockets(:%d) = %v; want %v (not the connection, not another port or address)", 0x7048, got, want)
	}
	if got := listeningSockets(tcp, 0x7049); !got["socket:[333]"] || len(got) != 1 {
		t.Errorf("listeningSockets(*:%d) = %v; want socket:[333]", 0x7049, got)
	}
}

// TestDeploymentMemoryLimit: the bench's GOMEMLIMIT is the one the daemon
// sets itself in the Deployment's container (its memory limit less 64 MiB,
// main.go's memoryLimitRatio).
func TestDeploymentMemoryLimit(t *testing.T) {
	b, err := os.ReadFile("../../deploy/base/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	limit := regexp.MustCompile(`(?m)^\s+limits:\s*\n\s+memory:\s*(\S+)`).FindSubmatch(b)
	if limit == nil {
		t.Fatal("no memory limit in deploy/base/deployment.yaml")
	}
	q, err := resource.ParseQuantity(string(limit[1]))
	if err != nil {
		t.Fatal(err)
	}
	if want := strconv.FormatInt(q.Value()-64<<20, 10); deploymentMemoryLimit != want {
		t.Errorf("deploymentMemoryLimit = %s; the Deployment's limit is %s, so the daemon sets GOMEMLIMIT=%s", deploymentMemoryLimit, limit[1], want)
	}
	if strings.Contains(string(b), "name: GOMEMLIMIT") {
		t.Error("the Deployment sets GOMEMLIMIT: the bench should use that value")
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command name with a space and a parenthesis, as /proc shows it.
	stat := "4242 (kube apiserver) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 12 0 987654 1000000 2000 18446744073709551615"
	p, ok := parseStatCPU(stat, 100)
	if !ok {
		t.Fatal("not parsed")
	}
	if p.comm != "kube apiserver" || p.cpuS != 4 || p.started != 987654 {
		t.Errorf("got %+v, want comm %q, 4 CPU-seconds, started 987654", p, "kube apiserver")
	}
	if _, ok := parseStatCPU("4242 (short) S 1 2", 100); ok {
		t.Error("a truncated stat line parsed")
	}
}

func TestCPUSince(t *testing.T) {
	before := cpuSnapshot{
		1: {comm: "postgres", started: 10, cpuS: 5},
		2: {comm: "postgres", started: 10, cpuS: 1},
		3: {comm: "kube-apiserver", started: 10, cpuS: 7},
		4: {comm: "sh", started: 10, cpuS: 3},
		5: {comm: "kworker/0:1-events", started: 10, cpuS: 2},
	}
	after := cpuSnapshot{
		1: {comm: "postgres", started: 10, cpuS: 6},                // +1
		2: {comm: "postgres", started: 10, cpuS: 1.5},              // +0.5
		3: {comm: "kube-apiserver", started: 10, cpuS: 9},          // +2, named
		4: {comm: "sleep", started: 20, cpuS: 0.25},                // pid reused: 0.25 from zero
		5: {comm: "kworker/0:1-writeback", started: 10, cpuS: 2.5}, // renamed worker: +0.5
		6: {comm: "tiny", started: 30, cpuS: 0.01},                 // new, below the cut
	}
	got := cpuSince(before, after, map[int]string{3: "kube-apiserver-b"})
	want := []cpuUse{{"kube-apiserver-b", 2}, {"postgres", 1.5}, {"kworker", 0.5}, {"sleep", 0.25}, {"other", 0.01}}
	if !slices.Equal(got, want) {
		t.Errorf("cpuSince = %v, want %v", got, want)
	}
	if s := formatCPUUse(want); s != "total 4.26s: kube-apiserver-b 2.00s, postgres 1.50s, kworker 0.50s, sleep 0.25s, other 0.01s" {
		t.Errorf("formatCPUUse = %q", s)
	}
}
