// Package deploy_test validates the manifests in deploy/: the kustomize
// overlays (cluster-wide and namespaced) and the cert-manager/ACME examples.
// Static checks read the rendered YAML and need only kubectl; the rest run
// against real kube-apiservers from internal/testenv (server-side dry-run, a
// real apply, Pods checked by the restricted Pod Security admission, and
// SubjectAccessReviews that ask the API server's own RBAC authorizer what the
// ServiceAccount may do).
package deploy_test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

const (
	// namespace and serviceAccount are the daemon's own, in every overlay.
	namespace      = "kube-secret-sync"
	serviceAccount = "kube-secret-sync"
	// secretName holds the DSN and the encryption key; the operator creates it.
	secretName = "kube-secret-sync"
	// otherNamespace stands for any application namespace; the namespaced
	// overlays list it.
	otherNamespace = "web"
	// unlistedNamespace is an application namespace that the namespaced
	// overlays do not list.
	unlistedNamespace = "shop"
)

// overlay is one deployable kustomization, and the Helm chart's values
// that deploy the same (TestChartMatchesKustomize).
type overlay struct {
	role, dir string
	leader    bool
	// namespaces are what a namespaced overlay syncs (its NAMESPACES, and
	// where its Roles are); nil for a cluster-wide overlay.
	namespaces []string
	// failover: a leader of a failover setup, which follows the writer's
	// rows while on standby.
	failover bool
	// values are the chart's --set values for the same install.
	values []string
}

// writes reports whether the overlay's daemon writes Secrets: a follower,
// or a leader that may be on standby.
func (o overlay) writes() bool { return !o.leader || o.failover }

// overlays are the deployable kustomizations, by role.
var overlays = []overlay{
	{"leader", "overlays/leader", true, nil, false, []string{"role=leader", "clusterName=leader"}},
	{"follower", "overlays/follower", false, nil, false, []string{"role=follower", "clusterName=follower"}},
	{"leader-namespaced", "overlays/leader-namespaced", true, []string{"web", "api"}, false,
		[]string{"role=leader", "clusterName=leader", "namespaces={web,api}"}},
	{"follower-namespaced", "overlays/follower-namespaced", false, []string{"web", "api"}, false,
		[]string{"role=follower", "clusterName=follower", "namespaces={web,api}"}},
	{"failover-leader", "overlays/failover-leader", true, nil, true, []string{"role=failover-leader", "clusterName=leader"}},
	{"failover-leader-namespaced", "overlays/failover-leader-namespaced", true, []string{"web", "api"}, true,
		[]string{"role=failover-leader", "clusterName=leader", "namespaces={web,api}"}},
}

// sources are the two ways to install an overlay: its kustomization, or
// the Helm chart with its values. Every overlay test runs on both.
var sources = []string{"kustomize", "helm"}

// mustRender renders o from source. The chart creates no Namespace (Helm's
// convention: the namespace is the install's), so the helm rendering
// starts with deploy/base's, which an operator applies first (README).
func mustRender(tb testing.TB, o overlay, source string) []manifest {
	tb.Helper()
	if source == "kustomize" {
		return mustKustomize(tb, o.dir)
	}
	return append(mustReadManifests(tb, "base/namespace.yaml"), mustHelmTemplate(tb, o.values...)...)
}

// mustRenderFile writes o rendered from source to a file for kubectl -f.
func mustRenderFile(tb testing.TB, o overlay, source string) string {
	tb.Helper()
	var b bytes.Buffer
	for _, m := range mustRender(tb, o, source) {
		b.WriteString("---\n")
		b.Write(m.raw)
		b.WriteString("\n")
	}
	file := filepath.Join(tb.TempDir(), source+".yaml")
	if err := os.WriteFile(file, b.Bytes(), 0o644); err != nil {
		tb.Fatal(err)
	}
	return file
}

// namespacesExample declares the application namespaces of the examples and
// the namespaced overlays, which must exist before those are applied.
const namespacesExample = "examples/namespaces.yaml"

// examples are applied in this order (the Certificate refers to the
// ClusterIssuer, but validation does not need it to exist).
var examples = []string{
	namespacesExample,
	"examples/cluster-issuer.yaml",
	"examples/certificate.yaml",
	"examples/acme-forwarding.yaml",
}

// access is one question for the authorizer: may the daemon's
// ServiceAccount do verb on group/resource (in namespace, "" meaning all
// namespaces or a cluster-scoped resource; name "" meaning any)?
type access struct {
	verb, group, resource, namespace, name string
	want                                   bool
}

func (a access) String() string {
	s := a.verb + " " + a.resource
	if a.group != "" {
		s += "." + a.group
	}
	if a.name != "" {
		s += "/" + a.name
	}
	if a.namespace != "" {
		s += " in " + a.namespace
	} else {
		s += " cluster-wide"
	}
	return s
}

// expectedAccess is least privilege spelt out: what the overlay's
// ServiceAccount must be able to do, and what it must not.
func expectedAccess(o overlay) []access {
	if o.namespaces != nil {
		return namespacedAccess(o)
	}
	return clusterWideAccess(!o.writes())
}

// leaseAccess: leader election on its own Lease only, in every overlay.
var leaseAccess = []access{
	{"get", "coordination.k8s.io", "leases", namespace, "kube-secret-sync", true},
	{"update", "coordination.k8s.io", "leases", namespace, "kube-secret-sync", true},
	{"create", "coordination.k8s.io", "leases", namespace, "", true},
	{"update", "coordination.k8s.io", "leases", namespace, "someone-elses-lease", false},
	{"delete", "coordination.k8s.io", "leases", namespace, "kube-secret-sync", false},
	{"create", "coordination.k8s.io", "leases", otherNamespace, "", false},
}

// cursorAccess: the follower's cursor ConfigMap and no other; a read-only
// leader has none.
func cursorAccess(readOnly bool) []access {
	if readOnly {
		return []access{
			{"get", "", "configmaps", namespace, "kube-secret-sync-state", false},
			{"create", "", "configmaps", namespace, "", false},
		}
	}
	return []access{
		{"get", "", "configmaps", namespace, "kube-secret-sync-state", true},
		{"update", "", "configmaps", namespace, "kube-secret-sync-state", true},
		{"create", "", "configmaps", namespace, "", true},
		{"update", "", "configmaps", namespace, "some-other-configmap", false},
		{"delete", "", "configmaps", namespace, "kube-secret-sync-state", false},
	}
}

// clusterWideAccess is least privilege for the cluster-wide overlays: a
// read-only leader's, or a follower's (also a failover leader's).
func clusterWideAccess(readOnly bool) []access {
	both := slices.Concat(leaseAccess, cursorAccess(readOnly), []access{
		// Events, also about Secrets in application namespaces.
		{"create", "", "events", otherNamespace, "", true},
		{"patch", "", "events", otherNamespace, "", true},
		{"create", "events.k8s.io", "events", otherNamespace, "", true},
		{"patch", "events.k8s.io", "events", namespace, "", true},
		{"delete", "", "events", otherNamespace, "", false},
		// Nothing else.
		{"create", "", "pods", namespace, "", false},
		{"get", "", "configmaps", otherNamespace, "", false},
		{"update", "", "configmaps", otherNamespace, "kube-secret-sync-state", false},
		{"delete", "", "namespaces", "", otherNamespace, false},
		{"deletecollection", "", "secrets", otherNamespace, "", false},
		{"patch", "rbac.authorization.k8s.io", "clusterroles", "", "kube-secret-sync-leader", false},
		// NAMESPACE_SELECTOR's watch.
		{"list", "", "namespaces", "", "", true},
		{"watch", "", "namespaces", "", "", true},
	})
	if readOnly {
		return append(both,
			access{"list", "", "secrets", "", "", true},
			access{"watch", "", "secrets", "", "", true},
			access{"get", "", "secrets", otherNamespace, "www-example-com-tls", true},
			// Read-only: the leader never writes a Secret.
			access{"create", "", "secrets", otherNamespace, "", false},
			access{"update", "", "secrets", otherNamespace, "www-example-com-tls", false},
			access{"patch", "", "secrets", otherNamespace, "www-example-com-tls", false},
			access{"delete", "", "secrets", otherNamespace, "www-example-com-tls", false},
			access{"create", "", "namespaces", "", "", false},
		)
	}
	return append(both,
		access{"list", "", "secrets", "", "", true},
		access{"watch", "", "secrets", "", "", true},
		access{"get", "", "secrets", otherNamespace, "www-example-com-tls", true},
		access{"create", "", "secrets", otherNamespace, "", true},
		access{"update", "", "secrets", otherNamespace, "www-example-com-tls", true},
		access{"delete", "", "secrets", otherNamespace, "www-example-com-tls", true},
		access{"get", "", "namespaces", "", otherNamespace, true},
		access{"create", "", "namespaces", "", "", true},
		access{"update", "", "namespaces", "", otherNamespace, false},
	)
}

// namespacedAccess is least privilege for a namespaced overlay: Secrets and
// Events in the listed namespaces only (Events in its own namespace too),
// nothing on Namespaces, and nothing cluster-wide.
func namespacedAccess(o overlay) []access {
	want := slices.Concat(leaseAccess, cursorAccess(!o.writes()), []access{
		{"create", "", "events", namespace, "", true},
		{"patch", "events.k8s.io", "events", namespace, "", true},
		// No Events in other namespaces, nor across all of them.
		{"create", "", "events", unlistedNamespace, "", false},
		{"create", "events.k8s.io", "events", unlistedNamespace, "", false},
		{"create", "", "events", "", "", false},
		// No Secrets across all namespaces, in an unlisted one, or in its
		// own (where its DSN and key are).
		{"list", "", "secrets", "", "", false},
		{"watch", "", "secrets", "", "", false},
		{"get", "", "secrets", namespace, secretName, false},
		{"list", "", "secrets", namespace, "", false},
		// No Namespaces: the follower runs with CREATE_NAMESPACES=false.
		{"get", "", "namespaces", "", otherNamespace, false},
		{"list", "", "namespaces", "", "", false},
		{"create", "", "namespaces", "", "", false},
		{"delete", "", "namespaces", "", otherNamespace, false},
		// Nothing else.
		{"create", "", "pods", namespace, "", false},
		{"get", "", "configmaps", otherNamespace, "", false},
		{"create", "rbac.authorization.k8s.io", "rolebindings", otherNamespace, "", false},
		{"patch", "rbac.authorization.k8s.io", "roles", namespace, "kube-secret-sync-" + o.role, false},
	})
	for _, verb := range []string{"get", "list", "watch", "create", "update", "delete"} {
		want = append(want, access{verb, "", "secrets", unlistedNamespace, "", false})
	}
	for _, ns := range o.namespaces {
		want = append(want,
			access{"create", "", "events", ns, "", true},
			access{"patch", "", "events", ns, "", true},
			access{"create", "events.k8s.io", "events", ns, "", true},
			access{"delete", "", "events", ns, "", false},
			// The informer lists and watches with a label selector.
			access{"list", "", "secrets", ns, "", true},
			access{"watch", "", "secrets", ns, "", true},
			access{"patch", "", "secrets", ns, "www-example-com-tls", false},
			access{"deletecollection", "", "secrets", ns, "", false},
			access{"get", "", "configmaps", ns, "kube-secret-sync-state", false},
		)
		// The leader reads (its watch, and the Secrets it seals) and never
		// writes; the follower writes its copies.
		want = append(want, access{"get", "", "secrets", ns, "www-example-com-tls", true})
		for _, verb := range []string{"create", "update", "delete"} {
			want = append(want, access{verb, "", "secrets", ns, "www-example-com-tls", o.writes()})
		}
	}
	return want
}

// TestOverlayManifests checks the rendered overlays without a cluster: the
// Deployment's security context, probes and configuration, and RBAC by
// evaluating the rendered rules.
func TestOverlayManifests(t *testing.T) {
	for _, o := range overlays {
		for _, source := range sources {
			t.Run(o.role+"/"+source, func(t *testing.T) { checkOverlay(t, o, mustRender(t, o, source)) })
		}
	}
}

// checkOverlay is TestOverlayManifests for o's objects, objs.
func checkOverlay(t *testing.T, o overlay, objs []manifest) {
	t.Helper()
	// Only the daemon's namespace, and the Roles of a namespaced
	// overlay in the namespaces it lists; a namespaced overlay has
	// nothing cluster-wide but its own Namespace.
	for _, obj := range objs {
		switch obj.Kind {
		case "Namespace":
			if obj.Name != namespace {
				t.Errorf("Namespace %s: an overlay may create only its own namespace (application namespaces belong to the applications)", obj.Name)
			}
		case "ClusterRole", "ClusterRoleBinding":
			if o.namespaces != nil {
				t.Errorf("%s %s in a namespaced overlay; want Roles in the listed namespaces", obj.Kind, obj.Name)
			}
		case "Role", "RoleBinding":
			if obj.Namespace != namespace && !slices.Contains(o.namespaces, obj.Namespace) {
				t.Errorf("%s %s: namespace %q; want %q or a listed namespace %v", obj.Kind, obj.Name, obj.Namespace, namespace, o.namespaces)
			}
		default:
			if obj.Namespace != namespace {
				t.Errorf("%s %s: namespace %q; want %q", obj.Kind, obj.Name, obj.Namespace, namespace)
			}
		}
	}

	var ns corev1.Namespace
	mustFind(t, objs, "Namespace", namespace).into(t, &ns)
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Errorf("namespace label pod-security.kubernetes.io/enforce = %q; want restricted", got)
	}

	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "kube-secret-sync").into(t, &d)
	checkDeployment(t, &d, o)

	var svc corev1.Service
	mustFind(t, objs, "Service", "kube-secret-sync").into(t, &svc)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 8080 || svc.Spec.Ports[0].TargetPort != intstr.FromString("metrics") {
		t.Errorf("Service ports = %+v; want 8080 -> metrics", svc.Spec.Ports)
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the Deployment's pods (labels %v)", k, v, d.Spec.Template.Labels)
		}
	}

	p := policyFor(t, objs, namespace, serviceAccount)
	for _, rule := range p.allRules() {
		for _, field := range [][]string{rule.Verbs, rule.APIGroups, rule.Resources} {
			if slices.Contains(field, "*") {
				t.Errorf("rule %v uses a wildcard; list what is needed", rule)
			}
		}
	}
	for _, a := range expectedAccess(o) {
		if got := p.allows(a); got != a.want {
			t.Errorf("rendered RBAC: may %s: %v; want %v", a, got, a.want)
		}
	}
	// NAMESPACES and the Roles must list the same namespaces: a
	// Role without its namespace in NAMESPACES is an unused grant,
	// and a listed namespace without its Role stops the daemon's
	// watch (checkDeployment compares NAMESPACES with o.namespaces).
	if o.namespaces != nil {
		var withSecrets []string
		for ns, rules := range p.namespaced {
			if slices.ContainsFunc(rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "secrets") }) {
				withSecrets = append(withSecrets, ns)
			}
		}
		if !sameSet(withSecrets, o.namespaces) {
			t.Errorf("Roles grant Secrets in %v; want exactly the listed namespaces %v", withSecrets, o.namespaces)
		}
	}
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func checkDeployment(t *testing.T, d *appsv1.Deployment, o overlay) {
	t.Helper()
	pod := d.Spec.Template.Spec
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("replicas = %v; want at least 2 (a standby for the Lease)", d.Spec.Replicas)
	}
	if pod.ServiceAccountName != serviceAccount {
		t.Errorf("serviceAccountName = %q; want %q", pod.ServiceAccountName, serviceAccount)
	}
	if pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken {
		t.Errorf("automountServiceAccountToken = %v; want true (in-cluster config)", pod.AutomountServiceAccountToken)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers; want 1", len(pod.Containers))
	}
	c := pod.Containers[0]

	// The restricted Pod Security Standard, field by field; a container
	// setting overrides the pod's.
	psc := pod.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("container %s has no securityContext", c.Name)
	}
	runAsNonRoot := cmpOr(sc.RunAsNonRoot, psc.RunAsNonRoot)
	runAsUser := cmpOr(sc.RunAsUser, psc.RunAsUser)
	seccomp := cmpOr(sc.SeccompProfile, psc.SeccompProfile)
	if runAsNonRoot == nil || !*runAsNonRoot {
		t.Errorf("runAsNonRoot = %v; want true", runAsNonRoot)
	}
	if runAsUser == nil || *runAsUser != 65532 {
		t.Errorf("runAsUser = %v; want 65532 (distroless nonroot)", runAsUser)
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccompProfile = %+v; want RuntimeDefault", seccomp)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation = %v; want false", sc.AllowPrivilegeEscalation)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("readOnlyRootFilesystem = %v; want true", sc.ReadOnlyRootFilesystem)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("privileged = true; want unset or false")
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("capabilities = %+v; want drop [ALL], add nothing", sc.Capabilities)
	}

	// Probes on the named metrics port.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["metrics"] != 8080 {
		t.Errorf("container ports = %v; want metrics: 8080", c.Ports)
	}
	for _, probe := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"livenessProbe", c.LivenessProbe, "/healthz"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
	} {
		if probe.probe == nil || probe.probe.HTTPGet == nil {
			t.Errorf("%s = %+v; want an httpGet of %s", probe.name, probe.probe, probe.path)
			continue
		}
		g := probe.probe.HTTPGet
		if g.Path != probe.path || g.Port != intstr.FromString("metrics") {
			t.Errorf("%s = GET %s on port %s; want GET %s on port metrics", probe.name, g.Path, g.Port.String(), probe.path)
		}
	}

	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources = %+v; want cpu and memory requests and a memory limit", c.Resources)
	}

	// Configuration: secrets only by reference, the downward API for leader
	// election, the role from the overlay.
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		if _, dup := env[e.Name]; dup {
			t.Errorf("env %s set twice", e.Name)
		}
		env[e.Name] = e
	}
	for name, key := range map[string]string{"DSN": "dsn", "ENCRYPTION_KEY": "encryption-key"} {
		e := env[name]
		ref := (*corev1.SecretKeySelector)(nil)
		if e.ValueFrom != nil {
			ref = e.ValueFrom.SecretKeyRef
		}
		if e.Value != "" || ref == nil || ref.Name != secretName || ref.Key != key {
			t.Errorf("env %s = %+v; want only a secretKeyRef to %s/%s", name, e, secretName, key)
		}
	}
	for name, path := range map[string]string{"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"} {
		e := env[name]
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("env %s = %+v; want a fieldRef to %s", name, e, path)
		}
	}
	if got := env["LEADER"].Value; (got == "1") != o.leader {
		t.Errorf("env LEADER = %q; leader %v", got, o.leader)
	}
	// A namespaced overlay syncs its listed namespaces, and its follower
	// must not try to create a namespace it has no permission for.
	if got, want := env["NAMESPACES"].Value, strings.Join(o.namespaces, ","); got != want {
		t.Errorf("env NAMESPACES = %q; want %q", got, want)
	}
	if got := env["CREATE_NAMESPACES"].Value; o.namespaces != nil && o.writes() && got != "false" {
		t.Errorf("env CREATE_NAMESPACES = %q; want \"false\" (no permission on Namespaces)", got)
	}
	if env["CLUSTER_NAME"].Value == "" {
		t.Errorf("env CLUSTER_NAME is empty; want a placeholder for the cluster's name")
	}
}

// cmpOr returns the first non-nil pointer.
func cmpOr[T any](ps ...*T) *T {
	for _, p := range ps {
		if p != nil {
			return p
		}
	}
	return nil
}

// policy is the RBAC rules that bind to one subject, with their scope.
type policy struct {
	cluster    []rbacv1.PolicyRule            // through ClusterRoleBindings
	namespaced map[string][]rbacv1.PolicyRule // through RoleBindings, by namespace
}

func (p policy) allRules() []rbacv1.PolicyRule {
	rules := slices.Clone(p.cluster)
	for _, rs := range p.namespaced {
		rules = append(rules, rs...)
	}
	return rules
}

// allows evaluates a the way the RBAC authorizer does for resource requests:
// cluster-wide rules apply everywhere, namespaced ones in their namespace.
func (p policy) allows(a access) bool {
	rules := slices.Clone(p.cluster)
	if a.namespace != "" {
		rules = append(rules, p.namespaced[a.namespace]...)
	}
	matches := func(list []string, v string) bool { return slices.Contains(list, v) || slices.Contains(list, "*") }
	for _, r := range rules {
		if matches(r.Verbs, a.verb) && matches(r.APIGroups, a.group) && matches(r.Resources, a.resource) &&
			(len(r.ResourceNames) == 0 || (a.name != "" && slices.Contains(r.ResourceNames, a.name))) {
			return true
		}
	}
	return false
}

// policyFor collects the rules that the rendered bindings grant to the
// ServiceAccount ns/sa. A binding to a role missing from objs is an error.
func policyFor(t *testing.T, objs []manifest, ns, sa string) policy {
	t.Helper()
	p := policy{namespaced: map[string][]rbacv1.PolicyRule{}}
	roleRules := func(kind, name, bindingNS string) []rbacv1.PolicyRule {
		if kind == "ClusterRole" {
			var r rbacv1.ClusterRole
			mustFind(t, objs, kind, name).into(t, &r)
			return r.Rules
		}
		// A RoleBinding refers to the Role of that name in its own
		// namespace.
		var r rbacv1.Role
		mustFindIn(t, objs, kind, bindingNS, name).into(t, &r)
		return r.Rules
	}
	bound := func(subjects []rbacv1.Subject) bool {
		return slices.ContainsFunc(subjects, func(s rbacv1.Subject) bool {
			return s.Kind == rbacv1.ServiceAccountKind && s.Name == sa && s.Namespace == ns
		})
	}
	for _, obj := range objs {
		switch obj.Kind {
		case "ClusterRoleBinding":
			var b rbacv1.ClusterRoleBinding
			obj.into(t, &b)
			if bound(b.Subjects) {
				p.cluster = append(p.cluster, roleRules(b.RoleRef.Kind, b.RoleRef.Name, "")...)
			}
		case "RoleBinding":
			var b rbacv1.RoleBinding
			obj.into(t, &b)
			if bound(b.Subjects) {
				p.namespaced[b.Namespace] = append(p.namespaced[b.Namespace], roleRules(b.RoleRef.Kind, b.RoleRef.Name, b.Namespace)...)
			}
		}
	}
	return p
}

// TestOverlaysRBAC applies each overlay for real, to its own cluster (all
// use the same namespace and ServiceAccount), and asks the API server's RBAC
// authorizer, through SubjectAccessReviews, whether the ServiceAccount may
// do what it needs and nothing beyond.
func TestOverlaysRBAC(t *testing.T) {
	clusters := testenv.Clusters(t, len(overlays))
	for i, o := range overlays {
		c := clusters[i]
		// kustomize's objects, then, once they are deleted, the chart's.
		for _, source := range sources {
			t.Run(o.role+"/"+source, func(t *testing.T) { checkRBAC(t, c, o, source) })
		}
	}
}

// checkRBAC is TestOverlaysRBAC for o installed from source into c; it
// deletes what it installed (but the namespaces) when it is done.
func checkRBAC(t *testing.T, c *testenv.Cluster, o overlay, source string) {
	t.Helper()
	if o.namespaces != nil {
		// The listed namespaces come first, as the overlay's comment
		// says: its Roles live in them.
		mustKubectl(t, c.Kubeconfig, "apply", "--validate=strict", "-f", namespacesExample)
	}
	// The Namespace comes first and carries the restricted Pod Security
	// labels, so the API server checks the Deployment's pod template
	// against them and warns on any violation; it also warns about
	// deprecated APIs. Neither is acceptable. The chart's objects go
	// through server-side apply, as Helm 4 and Flux apply them.
	objs := mustRender(t, o, source)
	file := mustRenderFile(t, o, source)
	apply := []string{"apply", "--validate=strict", "-f", file}
	if source == "helm" {
		apply = append(apply, "--server-side", "--field-manager=helm")
	}
	for _, dryRun := range []string{"--dry-run=none", "--dry-run=server"} {
		_, stderr := mustKubectl(t, c.Kubeconfig, append(apply, dryRun)...)
		if strings.Contains(stderr, "PodSecurity") || strings.Contains(stderr, "deprecated") {
			t.Errorf("kubectl %s warned:\n%s", strings.Join(append(apply, dryRun), " "), stderr)
		}
	}
	// The next source's objects have the same names.
	t.Cleanup(func() {
		for _, m := range objs {
			if m.Kind != "Namespace" {
				mustKubectl(t, c.Kubeconfig, "delete", "--wait", "--ignore-not-found", m.Kind, m.Name, "-n", cmp.Or(m.Namespace, namespace))
			}
		}
	})

	user := "system:serviceaccount:" + namespace + ":" + serviceAccount
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}
	for _, a := range expectedAccess(o) {
		review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: a.verb, Group: a.group, Resource: a.resource, Namespace: a.namespace, Name: a.name,
			},
		}}
		got, err := c.Clientset.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), review, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SubjectAccessReview for %s: %v", a, err)
		}
		if got.Status.Allowed != a.want {
			t.Errorf("API server: may %s: %v (%s); want %v", a, got.Status.Allowed, got.Status.Reason, a.want)
		}
	}
}

// TestOverlaysServerDryRun has a real API server validate every object of
// every overlay (schemas, unknown fields, admission) without persisting them.
func TestOverlaysServerDryRun(t *testing.T) {
	c := testenv.Clusters(t, 1)[0]
	for _, o := range overlays {
		for _, source := range sources {
			t.Run(o.role+"/"+source, func(t *testing.T) {
				// Under dry-run the Namespace is not created, so the
				// namespaced objects need their namespaces to exist already.
				for _, ns := range append([]string{namespace}, o.namespaces...) {
					mustEnsureNamespace(t, c, ns)
				}
				apply := []string{"apply", "--dry-run=server", "--validate=strict", "-f", mustRenderFile(t, o, source)}
				if source == "helm" {
					apply = append(apply, "--server-side", "--field-manager=helm")
				}
				mustKubectl(t, c.Kubeconfig, apply...)
			})
		}
	}
}

// TestOverlaysPodSecurityRestricted shows that each overlay's pods are
// admitted under the restricted Pod Security Standard, and that the check
// has teeth. A Deployment's dry-run only warns about its pod template; the
// PodSecurity admission enforces on Pods. So each rendered pod template is
// created as a Pod (server-side dry-run) in a namespace with the labels of
// the overlay's own Namespace; copies weakened one field at a time must be
// refused.
func TestOverlaysPodSecurityRestricted(t *testing.T) {
	c := testenv.Clusters(t, 1)[0]
	// container is the daemon's container (the only one; checkDeployment
	// makes sure).
	container := func(s *corev1.PodSpec) *corev1.SecurityContext { return s.Containers[0].SecurityContext }
	weakenings := []weakening{
		{"privilege escalation", func(s *corev1.PodSpec) {
			container(s).AllowPrivilegeEscalation = ptr(true)
		}, "allowPrivilegeEscalation != false"},
		{"runAsNonRoot unset", func(s *corev1.PodSpec) {
			container(s).RunAsNonRoot, s.SecurityContext.RunAsNonRoot = nil, nil
		}, "runAsNonRoot != true"},
		{"root user", func(s *corev1.PodSpec) {
			container(s).RunAsUser = ptr(int64(0))
		}, "runAsUser=0"},
		{"capabilities kept", func(s *corev1.PodSpec) {
			container(s).Capabilities = nil
		}, "unrestricted capabilities"},
		{"capability added", func(s *corev1.PodSpec) {
			container(s).Capabilities.Add = []corev1.Capability{"NET_RAW"}
		}, "unrestricted capabilities"},
		{"no seccomp profile", func(s *corev1.PodSpec) {
			container(s).SeccompProfile, s.SecurityContext.SeccompProfile = nil, nil
		}, "seccompProfile"},
		{"host network", func(s *corev1.PodSpec) {
			s.HostNetwork = true
		}, "host namespaces"},
	}
	for _, o := range overlays {
		for _, source := range sources {
			t.Run(o.role+"/"+source, func(t *testing.T) { checkPodSecurity(t, c, mustRender(t, o, source), weakenings) })
		}
	}
}

// weakening is a pod spec made to violate the restricted Pod Security
// Standard.
type weakening struct {
	name   string
	weaken func(*corev1.PodSpec)
	// violation is how the PodSecurity admission names the check that
	// refuses the Pod.
	violation string
}

// checkPodSecurity is TestOverlaysPodSecurityRestricted for one rendering.
func checkPodSecurity(t *testing.T, c *testenv.Cluster, objs []manifest, weakenings []weakening) {
	t.Helper()
	var ownNS corev1.Namespace
	mustFind(t, objs, "Namespace", namespace).into(t, &ownNS)
	if ownNS.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Fatalf("Namespace %s labels %v; want pod-security.kubernetes.io/enforce=restricted", namespace, ownNS.Labels)
	}
	// A fresh namespace each: the daemon's own may exist already in
	// this shared cluster, with other labels or none.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testenv.UniqueName(t), Labels: ownNS.Labels}}
	if _, err := c.Clientset.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.DeleteNamespace(t, c, ns.Name) })
	// The ServiceAccount admission refuses a Pod whose ServiceAccount
	// does not exist, which would hide what PodSecurity says.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: serviceAccount}}
	if _, err := c.Clientset.CoreV1().ServiceAccounts(ns.Name).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "kube-secret-sync").into(t, &d)
	podFrom := func(weaken func(*corev1.PodSpec)) *corev1.Pod {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "kube-secret-sync", Namespace: ns.Name, Labels: d.Spec.Template.Labels},
			Spec:       *d.Spec.Template.Spec.DeepCopy(),
		}
		if weaken != nil {
			weaken(&pod.Spec)
		}
		return pod
	}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	pods := c.Clientset.CoreV1().Pods(ns.Name)
	if _, err := pods.Create(t.Context(), podFrom(nil), dryRun); err != nil {
		t.Fatalf("the Deployment's pod is not admitted under the restricted Pod Security Standard: %v", err)
	}
	for _, w := range weakenings {
		_, err := pods.Create(t.Context(), podFrom(w.weaken), dryRun)
		// The Forbidden status carries no reason code per check:
		// only its message says that PodSecurity refused, and why.
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `violates PodSecurity "restricted`) || !strings.Contains(err.Error(), w.violation) {
			t.Errorf("%s: create = %v; want Forbidden by PodSecurity restricted for %q", w.name, err, w.violation)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestExampleManifests checks that the examples fit together: the
// Certificate opts its Secret in and uses the ClusterIssuer, the follower's
// Ingress serves that Secret and sends ACME challenges to a Service whose
// hand-made endpoints really belong to it.
func TestExampleManifests(t *testing.T) {
	var objs []manifest
	for _, file := range examples {
		objs = append(objs, mustReadManifests(t, file)...)
	}

	// Every application namespace of the examples and of the namespaced
	// overlays is declared, and enforces the restricted Pod Security
	// Standard, like the daemon's own.
	used := map[string]bool{}
	for _, obj := range objs {
		if obj.Namespace != "" {
			used[obj.Namespace] = true
		}
	}
	for _, o := range overlays {
		for _, ns := range o.namespaces {
			used[ns] = true
		}
	}
	for ns := range used {
		var decl corev1.Namespace
		mustFindIn(t, objs, "Namespace", "", ns).into(t, &decl)
		if got := decl.Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
			t.Errorf("Namespace %s: label pod-security.kubernetes.io/enforce = %q; want restricted", ns, got)
		}
	}

	issuer := mustFind(t, objs, "ClusterIssuer", "letsencrypt").unstructured(t)
	cert := mustFind(t, objs, "Certificate", "www-example-com").unstructured(t)
	if labels, _, _ := unstructured.NestedStringMap(cert.Object, "spec", "secretTemplate", "labels"); labels["kube-secret-sync"] != "true" {
		t.Errorf("Certificate spec.secretTemplate.labels = %v; want kube-secret-sync: \"true\"", labels)
	}
	issuerRef, _, _ := unstructured.NestedStringMap(cert.Object, "spec", "issuerRef")
	if issuerRef["kind"] != "ClusterIssuer" || issuerRef["name"] != "letsencrypt" {
		t.Errorf("Certificate spec.issuerRef = %v; want the ClusterIssuer letsencrypt", issuerRef)
	}
	secret, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
	dnsNames, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	solvers, _, _ := unstructured.NestedSlice(issuer.Object, "spec", "acme", "solvers")
	var solverClass string
	if solver, ok := firstMap(solvers); ok {
		solverClass, _, _ = unstructured.NestedString(solver, "http01", "ingress", "ingressClassName")
	}
	if solverClass == "" {
		t.Errorf("ClusterIssuer spec.acme.solvers = %v; want an HTTP-01 solver with an ingressClassName", solvers)
	}

	var ing networkingv1.Ingress
	mustFind(t, objs, "Ingress", "www-example-com").into(t, &ing)
	if ing.Namespace != cert.GetNamespace() {
		t.Errorf("Ingress namespace %q; want the Certificate's, %q", ing.Namespace, cert.GetNamespace())
	}
	if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != solverClass {
		t.Errorf("Ingress class %v; want the HTTP-01 solver's, %q", ing.Spec.IngressClassName, solverClass)
	}
	if len(ing.Spec.TLS) != 1 || ing.Spec.TLS[0].SecretName != secret {
		t.Errorf("Ingress tls = %+v; want the Certificate's Secret %q", ing.Spec.TLS, secret)
	}
	if len(ing.Spec.Rules) != 1 || !slices.Contains(dnsNames, ing.Spec.Rules[0].Host) || ing.Spec.Rules[0].HTTP == nil {
		t.Fatalf("Ingress rules = %+v; want one rule for a host of the Certificate (%v)", ing.Spec.Rules, dnsNames)
	}
	var acme *networkingv1.HTTPIngressPath
	for i, p := range ing.Spec.Rules[0].HTTP.Paths {
		if p.Path == "/.well-known/acme-challenge/" && p.PathType != nil && *p.PathType == networkingv1.PathTypePrefix {
			acme = &ing.Spec.Rules[0].HTTP.Paths[i]
		}
	}
	if acme == nil || acme.Backend.Service == nil {
		t.Fatalf("Ingress has no Prefix path /.well-known/acme-challenge/ to a Service")
	}

	var svc corev1.Service
	mustFind(t, objs, "Service", acme.Backend.Service.Name).into(t, &svc)
	if len(svc.Spec.Selector) != 0 {
		t.Errorf("Service %s has a selector; want none (its endpoints point at the leader)", svc.Name)
	}
	svcPorts := map[string]int32{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = p.Port
	}
	if _, ok := svcPorts[acme.Backend.Service.Port.Name]; !ok {
		t.Errorf("Ingress backend port %q is not a port of Service %s (%v)", acme.Backend.Service.Port.Name, svc.Name, svcPorts)
	}
	slicesFound := 0
	for _, obj := range objs {
		if obj.Kind != "EndpointSlice" {
			continue
		}
		var es discoveryv1.EndpointSlice
		obj.into(t, &es)
		if es.Labels[discoveryv1.LabelServiceName] != svc.Name || es.Namespace != svc.Namespace {
			continue
		}
		slicesFound++
		for _, p := range es.Ports {
			// kube-proxy and ingress controllers match slice ports to
			// Service ports by name.
			if p.Name == nil || p.Port == nil || svcPorts[*p.Name] != *p.Port {
				t.Errorf("EndpointSlice %s port %+v does not match a port of Service %s (%v)", es.Name, p, svc.Name, svcPorts)
			}
		}
		if len(es.Endpoints) == 0 || len(es.Endpoints[0].Addresses) == 0 {
			t.Errorf("EndpointSlice %s has no addresses", es.Name)
		}
	}
	if slicesFound == 0 {
		t.Errorf("no EndpointSlice labelled %s=%s", discoveryv1.LabelServiceName, svc.Name)
	}
	for _, obj := range objs {
		if obj.Kind == "Endpoints" {
			var meta metav1.PartialObjectMetadata
			obj.into(t, &meta)
			if meta.Name != svc.Name || meta.Labels[discoveryv1.LabelSkipMirror] != "true" {
				t.Errorf("Endpoints %s: want name %s and label %s=true (no duplicate mirrored slice)", meta.Name, svc.Name, discoveryv1.LabelSkipMirror)
			}
		}
	}
}

// firstMap returns the first element of list if it is an object.
func firstMap(list []any) (map[string]any, bool) {
	if len(list) == 0 {
		return nil, false
	}
	m, ok := list[0].(map[string]any)
	return m, ok
}

// TestExamplesServerDryRun installs cert-manager's CRDs into a real API
// server and has it validate every example against their schemas.
func TestExamplesServerDryRun(t *testing.T) {
	c := testenv.Clusters(t, 1)[0]
	crds := mustCertManagerCRDs(t)
	mustKubectl(t, c.Kubeconfig, "apply", "--server-side", "--field-manager=kss-test", "-f", crds)
	// kubectl wait is a bounded poll of the CRDs' Established condition;
	// until then the API server does not serve the new kinds.
	mustKubectl(t, c.Kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/certificates.cert-manager.io", "crd/clusterissuers.cert-manager.io")

	for _, file := range examples {
		t.Run(filepath.Base(file), func(t *testing.T) {
			for _, obj := range mustReadManifests(t, file) {
				if obj.Namespace != "" {
					mustEnsureNamespace(t, c, obj.Namespace)
				}
			}
			mustKubectl(t, c.Kubeconfig, "apply", "--dry-run=server", "--validate=strict", "-f", file)
		})
	}
}

// mustCertManagerCRDs returns the directory of cert-manager's CRDs, from
// hack/cert-manager-crds.sh (a download through the Go module proxy).
func mustCertManagerCRDs(tb testing.TB) string {
	tb.Helper()
	return mustCRDs(tb, "cert-manager-crds.sh")
}

// mustCRDs returns the directory of CRDs that hack/script prints.
func mustCRDs(tb testing.TB, script string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 2*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "../hack/"+script)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		testenv.Missing(tb, fmt.Errorf("CRDs: hack/%s: %v: %s", script, err, stderr.String()))
	}
	return strings.TrimSpace(string(out))
}

// mustEnsureNamespace creates namespace name in c unless it exists.
func mustEnsureNamespace(tb testing.TB, c *testenv.Cluster, name string) {
	tb.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	_, err := c.Clientset.CoreV1().Namespaces().Create(tb.Context(), ns, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		tb.Fatalf("create namespace %s in %s: %v", name, c.Name, err)
	}
}

// mustKubectl runs kubectl with args, against the cluster of kubeconfig
// unless it is empty, and returns its stdout and stderr (warnings go
// there). It fails the test if kubectl fails, and skips it (fails in CI) if
// there is no kubectl.
func mustKubectl(tb testing.TB, kubeconfig string, args ...string) (stdout, stderr string) {
	tb.Helper()
	return testenv.MustKubectl(tb, kubeconfig, args...)
}

// manifest is one object of a YAML stream, kept as JSON.
type manifest struct {
	Kind, Namespace, Name string
	raw                   []byte
}

// into decodes the object into v, a typed API object.
func (m manifest) into(tb testing.TB, v any) {
	tb.Helper()
	if err := json.Unmarshal(m.raw, v); err != nil {
		tb.Fatalf("decode %s %s: %v", m.Kind, m.Name, err)
	}
}

// unstructured decodes the object generically, for kinds without Go types
// here (cert-manager's).
func (m manifest) unstructured(tb testing.TB) *unstructured.Unstructured {
	tb.Helper()
	obj := &unstructured.Unstructured{}
	m.into(tb, &obj.Object)
	return obj
}

func (m manifest) String() string { return m.Kind + " " + m.Namespace + "/" + m.Name }

// mustKustomize renders a kustomization with kubectl's built-in kustomize.
func mustKustomize(tb testing.TB, dir string) []manifest {
	tb.Helper()
	out, _ := mustKubectl(tb, "", "kustomize", dir)
	objs, err := decodeManifests(strings.NewReader(out))
	if err != nil {
		tb.Fatalf("kubectl kustomize %s: %v", dir, err)
	}
	return objs
}

func mustReadManifests(tb testing.TB, file string) []manifest {
	tb.Helper()
	f, err := os.Open(file)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	objs, err := decodeManifests(f)
	if err != nil {
		tb.Fatalf("%s: %v", file, err)
	}
	return objs
}

// decodeManifests splits a multi-document YAML stream into objects,
// skipping empty documents.
func decodeManifests(r io.Reader) ([]manifest, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var objs []manifest
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		raw, err := utilyaml.ToJSON(doc)
		if err != nil {
			return nil, err
		}
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			return nil, err
		}
		if head.Kind == "" {
			continue // a document of comments only
		}
		objs = append(objs, manifest{Kind: head.Kind, Namespace: head.Metadata.Namespace, Name: head.Metadata.Name, raw: raw})
	}
}

// mustFind returns the object of kind and name, failing the test if there is
// none.
func mustFind(tb testing.TB, objs []manifest, kind, name string) manifest {
	tb.Helper()
	for _, obj := range objs {
		if obj.Kind == kind && obj.Name == name {
			return obj
		}
	}
	tb.Fatalf("no %s %s among %v", kind, name, objs)
	return manifest{}
}

// mustFindIn returns the object of kind and name in namespace ns, failing
// the test if there is none.
func mustFindIn(tb testing.TB, objs []manifest, kind, ns, name string) manifest {
	tb.Helper()
	for _, obj := range objs {
		if obj.Kind == kind && obj.Namespace == ns && obj.Name == name {
			return obj
		}
	}
	tb.Fatalf("no %s %s/%s among %v", kind, ns, name, objs)
	return manifest{}
}
