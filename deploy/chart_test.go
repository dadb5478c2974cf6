package deploy_test

// The Helm chart, charts/kube-secret-sync: it renders what the kustomize
// overlays do (one source of truth, TestChartMatchesKustomize), and every
// overlay test of manifests_test.go runs on its rendering too.

import (
	"encoding/json"
	"fmt"
	"maps"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// chartDir is the chart, from deploy/.
const chartDir = "../charts/kube-secret-sync"

// releaseName is what the README's helm install names the release: the
// chart's own name, so that its objects have the overlays' names.
const releaseName = "kube-secret-sync"

// helmRun runs the helm that hack/helm.sh built.
func helmRun(tb testing.TB, args ...string) (stdout, stderr string, err error) {
	tb.Helper()
	bin, err := testenv.Helm()
	if err != nil {
		testenv.Missing(tb, err)
	}
	var out, errOut strings.Builder
	cmd := exec.CommandContext(tb.Context(), bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	// Helm's own state (repositories, cache) stays out of $HOME.
	dir := tb.TempDir()
	cmd.Env = append(cmd.Environ(), "HELM_CACHE_HOME="+dir, "HELM_CONFIG_HOME="+dir, "HELM_DATA_HOME="+dir)
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// kubeVersion is the API server's version: a `go install` build of helm
// assumes Kubernetes 1.20 otherwise, which the chart's kubeVersion refuses.
func kubeVersion(tb testing.TB) string {
	tb.Helper()
	v, err := testenv.KubeVersion()
	if err != nil {
		testenv.Missing(tb, err)
	}
	return v
}

// helmTemplate renders the chart as release releaseName in the daemon's
// namespace with --set values.
func helmTemplate(tb testing.TB, values ...string) ([]manifest, string, error) {
	tb.Helper()
	args := []string{"template", releaseName, chartDir, "--namespace", namespace, "--kube-version", kubeVersion(tb)}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	out, stderr, err := helmRun(tb, args...)
	if err != nil {
		return nil, stderr, err
	}
	objs, err := decodeManifests(strings.NewReader(out))
	return objs, stderr, err
}

// mustHelmTemplate is helmTemplate that fails the test on an error. The
// image tag is the overlays' (latest) unless values set another.
func mustHelmTemplate(tb testing.TB, values ...string) []manifest {
	tb.Helper()
	objs, stderr, err := helmTemplate(tb, append([]string{"image.tag=latest"}, values...)...)
	if err != nil {
		tb.Fatalf("helm template %v: %v\n%s", values, err, stderr)
	}
	return objs
}

// TestChartMatchesKustomize: for each overlay, the chart with the overlay's
// values renders the same objects, field by field, but for what is Helm's
// own: the labels (Helm's app.kubernetes.io/instance, managed-by, version
// and helm.sh/chart), the instance label in selectors, and the Namespace,
// which a Helm release does not create. The order of environment variables
// does not matter either.
func TestChartMatchesKustomize(t *testing.T) {
	for _, o := range overlays {
		t.Run(o.role, func(t *testing.T) {
			want := comparable(t, mustKustomize(t, o.dir))
			helm := mustHelmTemplate(t, o.values...)
			got := comparable(t, helm)
			for _, k := range slices.Sorted(maps.Keys(want)) {
				g, ok := got[k]
				if !ok {
					t.Errorf("%s: in the kustomize overlay, not in the chart", k)
					continue
				}
				if !reflect.DeepEqual(g, want[k]) {
					gj, _ := json.MarshalIndent(g, "", "  ")
					wj, _ := json.MarshalIndent(want[k], "", "  ")
					t.Errorf("%s differs.\nchart:\n%s\nkustomize:\n%s", k, gj, wj)
				}
			}
			for _, k := range slices.Sorted(maps.Keys(got)) {
				if _, ok := want[k]; !ok {
					t.Errorf("%s: in the chart, not in the kustomize overlay", k)
				}
			}
			// The labels that are not Helm's own are the overlay's.
			kustomized := map[string]manifest{}
			for _, m := range mustKustomize(t, o.dir) {
				kustomized[m.String()] = m
			}
			for _, m := range helm {
				gl, gpod := labelsOf(t, m)
				wl, wpod := labelsOf(t, kustomized[m.String()])
				for _, k := range []string{"app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/component"} {
					if wl[k] != "" && gl[k] != wl[k] {
						t.Errorf("%s: label %s = %q; the overlay's is %q", m, k, gl[k], wl[k])
					}
					if wpod[k] != "" && gpod[k] != wpod[k] {
						t.Errorf("%s: pod label %s = %q; the overlay's is %q", m, k, gpod[k], wpod[k])
					}
				}
				if gl["app.kubernetes.io/managed-by"] != "Helm" || gl["app.kubernetes.io/instance"] != releaseName || gl["helm.sh/chart"] == "" {
					t.Errorf("%s: labels %v; want Helm's managed-by, instance and helm.sh/chart", m, gl)
				}
			}
		})
	}
}

// labelsOf returns m's metadata.labels and, for a Deployment, its pod
// template's.
func labelsOf(t *testing.T, m manifest) (labels, pod map[string]string) {
	t.Helper()
	var obj struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			Template struct {
				Metadata struct {
					Labels map[string]string `json:"labels"`
				} `json:"metadata"`
			} `json:"template"`
		} `json:"spec"`
	}
	m.into(t, &obj)
	return obj.Metadata.Labels, obj.Spec.Template.Metadata.Labels
}

// comparable returns objs by kind, namespace and name, without what
// TestChartMatchesKustomize leaves out of the comparison.
func comparable(t *testing.T, objs []manifest) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, m := range objs {
		if m.Kind == "Namespace" {
			continue
		}
		var obj map[string]any
		m.into(t, &obj)
		meta := obj["metadata"].(map[string]any)
		delete(meta, "labels")
		spec, _ := obj["spec"].(map[string]any)
		dropInstance := func(selector any) {
			if s, ok := selector.(map[string]any); ok {
				delete(s, "app.kubernetes.io/instance")
				if ml, ok := s["matchLabels"].(map[string]any); ok {
					delete(ml, "app.kubernetes.io/instance")
				}
			}
		}
		switch m.Kind {
		case "Deployment":
			dropInstance(spec["selector"])
			tmpl := spec["template"].(map[string]any)
			delete(tmpl["metadata"].(map[string]any), "labels")
			pod := tmpl["spec"].(map[string]any)
			for _, c := range pod["topologySpreadConstraints"].([]any) {
				dropInstance(c.(map[string]any)["labelSelector"])
			}
			for _, c := range pod["containers"].([]any) {
				env := c.(map[string]any)["env"].([]any)
				slices.SortFunc(env, func(a, b any) int {
					return strings.Compare(a.(map[string]any)["name"].(string), b.(map[string]any)["name"].(string))
				})
			}
		case "Service", "PodDisruptionBudget", "PodMonitor", "ServiceMonitor":
			dropInstance(spec["selector"])
		}
		key := fmt.Sprintf("%s %s/%s", m.Kind, m.Namespace, m.Name)
		if _, dup := out[key]; dup {
			t.Errorf("%s rendered twice", key)
		}
		out[key] = obj
	}
	return out
}

// TestChartMonitoringMatchesKustomize: the chart's PrometheusRule and
// PodMonitor are deploy/monitoring's, as TestChartMatchesKustomize
// compares the overlays.
func TestChartMonitoringMatchesKustomize(t *testing.T) {
	want := comparable(t, mustKustomize(t, "monitoring"))
	var chart []manifest
	for _, m := range mustHelmTemplate(t, "clusterName=c", "metrics.prometheusRule.enabled=true", "metrics.podMonitor.enabled=true") {
		if m.Kind == "PrometheusRule" || m.Kind == "PodMonitor" {
			chart = append(chart, m)
		}
	}
	got := comparable(t, chart)
	if len(got) != 2 || len(want) != 2 {
		t.Fatalf("chart renders %v, deploy/monitoring %v; want a PrometheusRule and a PodMonitor each", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	for k, w := range want {
		if !reflect.DeepEqual(got[k], w) {
			gj, _ := json.MarshalIndent(got[k], "", "  ")
			wj, _ := json.MarshalIndent(w, "", "  ")
			t.Errorf("%s differs.\nchart:\n%s\ndeploy/monitoring:\n%s", k, gj, wj)
		}
	}
}

// TestMonitoringServerDryRun has a real API server, with the Prometheus
// Operator's CRDs, validate deploy/monitoring and the chart's monitoring
// objects (the ServiceMonitor too) against their schemas.
func TestMonitoringServerDryRun(t *testing.T) {
	c := testenv.Clusters(t, 1)[0]
	crds := mustCRDs(t, "prometheus-operator-crds.sh")
	for _, kind := range []string{"prometheusrules", "podmonitors", "servicemonitors"} {
		mustKubectl(t, c.Kubeconfig, "apply", "--server-side", "--field-manager=kss-test", "-f", crds+"/monitoring.coreos.com_"+kind+".yaml")
	}
	mustKubectl(t, c.Kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/prometheusrules.monitoring.coreos.com", "crd/podmonitors.monitoring.coreos.com", "crd/servicemonitors.monitoring.coreos.com")
	mustEnsureNamespace(t, c, namespace)
	mustKubectl(t, c.Kubeconfig, "apply", "--dry-run=server", "--validate=strict", "-k", "monitoring")
	for _, values := range [][]string{
		{"metrics.prometheusRule.enabled=true", "metrics.podMonitor.enabled=true"},
		{"metrics.serviceMonitor.enabled=true"},
	} {
		o := overlay{values: append([]string{"clusterName=c"}, values...)}
		mustKubectl(t, c.Kubeconfig, "apply", "--dry-run=server", "--validate=strict", "--server-side", "--field-manager=helm", "-f", mustRenderFile(t, o, "helm"))
	}
}

// TestChartLint: helm lint --strict is clean with the values of every
// overlay, and with every optional object on.
func TestChartLint(t *testing.T) {
	sets := [][]string{{"clusterName=c", "metrics.prometheusRule.enabled=true", "metrics.podMonitor.enabled=true", "leaseName=other"}}
	for _, o := range overlays {
		sets = append(sets, o.values)
	}
	for _, values := range sets {
		args := []string{"lint", "--strict", chartDir, "--kube-version", kubeVersion(t)}
		for _, v := range values {
			args = append(args, "--set", v)
		}
		if out, stderr, err := helmRun(t, args...); err != nil || strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
			t.Errorf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
		}
	}
}

// TestChartRefusesBadValues: a value the chart cannot deploy as meant fails
// helm install (here helm template, which checks the same), with a message
// that names it, instead of a pod that fails later.
func TestChartRefusesBadValues(t *testing.T) {
	for _, tt := range []struct {
		values []string
		want   string
	}{
		{nil, "clusterName"},
		{[]string{"clusterName=c", "role=leaderr"}, "/role"},
		{[]string{"clusterName=c", "replicas=3"}, "'replicas' not allowed"},
		{[]string{"clusterName=c", "replicaCount=two"}, "/replicaCount"},
		{[]string{"clusterName=c", "namespaces={Web_1}"}, "/namespaces/0"},
		{[]string{"clusterName=c", "namespaces=web"}, "/namespaces"},
		{[]string{"clusterName=c", "env.LEADER=1"}, "LEADER"},
		{[]string{"clusterName=c", "env.tick_seconds=5"}, "tick_seconds"},
		{[]string{"clusterName=c", "image.digest=latest"}, "/image/digest"},
		{[]string{"clusterName=c", "leaseName=Bad_Name"}, "/leaseName"},
		{[]string{"clusterName=c", "metrics.podMonitor.interval=often"}, "/metrics/podMonitor/interval"},
		{[]string{"clusterName=c", "metrics.podMonitor.enabled=true", "metrics.serviceMonitor.enabled=true"}, "both enabled"},
	} {
		_, stderr, err := helmTemplate(t, tt.values...)
		if err == nil || !strings.Contains(stderr, tt.want) {
			t.Errorf("helm template --set %v: %v, %q; want an error naming %q", tt.values, err, stderr, tt.want)
		}
	}
}

// TestChartLeaseName: the chart's RBAC follows leaseName, so that a Lease
// (and a follower's cursor ConfigMap) of another name keeps working; the
// default name sets no LEASE_NAME, as the overlays do.
func TestChartLeaseName(t *testing.T) {
	objs := mustHelmTemplate(t, "clusterName=c", "role=follower", "leaseName=kss-blue")
	p := policyFor(t, objs, namespace, serviceAccount)
	for _, a := range []access{
		{"update", "coordination.k8s.io", "leases", namespace, "kss-blue", true},
		{"update", "coordination.k8s.io", "leases", namespace, "kube-secret-sync", false},
		{"update", "", "configmaps", namespace, "kss-blue-state", true},
		{"update", "", "configmaps", namespace, "kube-secret-sync-state", false},
	} {
		if got := p.allows(a); got != a.want {
			t.Errorf("leaseName=kss-blue: may %s: %v; want %v", a, got, a.want)
		}
	}
	env := func(objs []manifest) map[string]string {
		var d struct {
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Env []struct{ Name, Value string }
						}
					}
				}
			}
		}
		mustFind(t, objs, "Deployment", releaseName).into(t, &d)
		out := map[string]string{}
		for _, e := range d.Spec.Template.Spec.Containers[0].Env {
			out[e.Name] = e.Value
		}
		return out
	}
	if got := env(objs)["LEASE_NAME"]; got != "kss-blue" {
		t.Errorf("LEASE_NAME = %q; want kss-blue", got)
	}
	if got, ok := env(mustHelmTemplate(t, "clusterName=c"))["LEASE_NAME"]; ok {
		t.Errorf("LEASE_NAME = %q with the default leaseName; want it unset", got)
	}
}

// TestChartNames: with fullnameOverride and nameOverride every object takes
// the override, and what refers to another object (the RBAC's subjects, the
// pods' ServiceAccount, the selectors of the Deployment, the Service and
// the PodDisruptionBudget) still finds it. topologySpreadConstraints
// replaces the default spread.
func TestChartNames(t *testing.T) {
	objs := mustHelmTemplate(t, "clusterName=c", "role=follower", "fullnameOverride=kss-eu", "nameOverride=sync",
		"topologySpreadConstraints[0].maxSkew=2", "topologySpreadConstraints[0].topologyKey=example.com/rack",
		"topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule")
	for _, o := range objs {
		if !strings.HasPrefix(o.Name, "kss-eu") {
			t.Errorf("%s: want a name that starts with fullnameOverride kss-eu", o)
		}
	}
	p := policyFor(t, objs, namespace, "kss-eu")
	if a := (access{"update", "coordination.k8s.io", "leases", namespace, "kube-secret-sync", true}); !p.allows(a) {
		t.Errorf("ServiceAccount kss-eu may not %s", a)
	}
	var d struct {
		Spec struct {
			Selector struct{ MatchLabels map[string]string }
			Template struct {
				Metadata struct{ Labels map[string]string }
				Spec     struct {
					ServiceAccountName        string
					TopologySpreadConstraints []struct {
						MaxSkew     int
						TopologyKey string
					}
				}
			}
		}
	}
	mustFind(t, objs, "Deployment", "kss-eu").into(t, &d)
	pod := d.Spec.Template.Metadata.Labels
	if got := d.Spec.Template.Spec.ServiceAccountName; got != "kss-eu" {
		t.Errorf("serviceAccountName = %q; want kss-eu", got)
	}
	if pod["app.kubernetes.io/name"] != "sync" {
		t.Errorf("pod label app.kubernetes.io/name = %q; want nameOverride sync", pod["app.kubernetes.io/name"])
	}
	if got := d.Spec.Template.Spec.TopologySpreadConstraints; len(got) != 1 || got[0].MaxSkew != 2 || got[0].TopologyKey != "example.com/rack" {
		t.Errorf("topologySpreadConstraints = %+v; want only the one set", got)
	}
	selectors := map[string]map[string]string{"Deployment": d.Spec.Selector.MatchLabels}
	for kind, field := range map[string]string{"Service": "selector", "PodDisruptionBudget": "matchLabels"} {
		for _, o := range objs {
			if o.Kind != kind {
				continue
			}
			var v struct {
				Spec struct {
					Selector map[string]any
				}
			}
			o.into(t, &v)
			sel := v.Spec.Selector
			if field == "matchLabels" {
				sel, _ = sel["matchLabels"].(map[string]any)
			}
			selectors[kind] = map[string]string{}
			for k, val := range sel {
				selectors[kind][k], _ = val.(string)
			}
		}
	}
	if len(selectors) != 3 {
		t.Errorf("selectors of %v; want a Deployment, a Service and a PodDisruptionBudget", slices.Sorted(maps.Keys(selectors)))
	}
	for kind, sel := range selectors {
		if len(sel) == 0 {
			t.Errorf("%s: no selector", kind)
		}
		for k, v := range sel {
			if pod[k] != v {
				t.Errorf("%s selects %s=%s; the pods have %q", kind, k, v, pod[k])
			}
		}
	}
}

// TestChartInstall installs the chart for real with helm into a real API
// server: its NOTES say what to do next, and helm uninstall removes what
// it installed.
func TestChartInstall(t *testing.T) {
	c := testenv.Clusters(t, 1)[0]
	const ns = "kss-helm"
	mustKubectl(t, c.Kubeconfig, "create", "namespace", ns)
	mustKubectl(t, c.Kubeconfig, "label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
	helm := func(args ...string) string {
		t.Helper()
		out, stderr, err := helmRun(t, append(args, "--kubeconfig", c.Kubeconfig, "--namespace", ns)...)
		if err != nil {
			t.Fatalf("helm %v: %v\n%s%s", args, err, out, stderr)
		}
		return out
	}
	out := helm("install", "sync", chartDir, "--set", "clusterName=eu-1", "--set", "role=leader", "--wait=false")
	for _, want := range []string{
		`as the leader of cluster "eu-1", syncing every namespace`,
		"kubectl -n kss-helm create secret generic sync-kube-secret-sync",
		"exec deployment/sync-kube-secret-sync -- /kube-secret-sync status",
		"kube-secret-sync=true",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install's notes lack %q:\n%s", want, out)
		}
	}
	for _, obj := range []string{"deployment/sync-kube-secret-sync", "clusterrole/sync-kube-secret-sync-leader", "rolebinding/sync-kube-secret-sync"} {
		mustKubectl(t, c.Kubeconfig, "get", "-n", ns, obj)
	}
	helm("uninstall", "sync", "--wait")
	if out, _ := mustKubectl(t, c.Kubeconfig, "get", "deployments,roles,rolebindings,serviceaccounts,services,poddisruptionbudgets", "-n", ns, "-o", "name"); strings.Contains(out, "sync-kube-secret-sync") {
		t.Errorf("after helm uninstall, left in %s:\n%s", ns, out)
	}
	if out, _ := mustKubectl(t, c.Kubeconfig, "get", "clusterroles,clusterrolebindings", "-o", "name"); strings.Contains(out, "sync-kube-secret-sync") {
		t.Errorf("after helm uninstall, cluster-wide objects are left:\n%s", out)
	}
}
