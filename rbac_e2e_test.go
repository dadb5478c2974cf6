package main

// End-to-end test of the namespaced install: the leader and the follower
// run with no permissions but those that deploy/overlays/leader-namespaced
// and deploy/overlays/follower-namespaced grant, and with the settings
// (NAMESPACES, CREATE_NAMESPACES) that those overlays' Deployments set.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// The namespaced overlays, and the names their objects use for the
// daemon's namespace and ServiceAccount.
const (
	leaderNamespacedOverlay   = "deploy/overlays/leader-namespaced"
	followerNamespacedOverlay = "deploy/overlays/follower-namespaced"
	overlayNamespace          = "kube-secret-sync"
	overlayServiceAccount     = "kube-secret-sync"
)

// TestNamespacedInstall runs a leader and a follower as the ServiceAccount
// of the namespaced overlays, with exactly the Roles those overlays ship,
// and shows that Secrets of the listed namespaces sync (create, update,
// delete, conflict Events), that a Secret of an unlisted namespace is not
// synced, and that no request of either daemon is ever refused.
//
// The clusters are shared with the package's other tests and cannot reuse a
// deleted namespace's name (without a controller manager it stays
// Terminating), so every namespace of the overlays is mapped to a fresh
// one: the daemon's own to the syncEnv's, each listed one to a new one. Only
// the namespaces the Roles live in change; their rules and subjects are the
// shipped ones.
func TestNamespacedInstall(t *testing.T) {
	e := newSyncEnv(t)
	leaderObjs := mustRender(t, leaderNamespacedOverlay)
	followerObjs := mustRender(t, followerNamespacedOverlay)
	leaderEnv := mustDeploymentEnv(t, leaderObjs)
	followerEnv := mustDeploymentEnv(t, followerObjs)

	listed := strings.Split(leaderEnv["NAMESPACES"], ",")
	if leaderEnv["NAMESPACES"] == "" || followerEnv["NAMESPACES"] != leaderEnv["NAMESPACES"] {
		t.Fatalf("NAMESPACES: leader %q, follower %q; want the same non-empty list", leaderEnv["NAMESPACES"], followerEnv["NAMESPACES"])
	}
	// The first listed namespace is the syncEnv's own synced namespace,
	// which its helpers (secrets, waitSynced, waitGone) work in.
	fresh := map[string]string{listed[0]: e.ns}
	for _, ns := range listed[1:] {
		fresh[ns] = testenv.Namespace(t, e.leader)
	}
	unlisted := testenv.Namespace(t, e.leader)
	// The follower may not create namespaces: they exist beforehand, as
	// the overlay's comment asks. The unlisted one too, so that a missing
	// namespace could not be why a Secret is not synced there.
	for ns, name := range fresh {
		if ns != listed[0] { // newSyncEnv deletes e.ns in the follower
			t.Cleanup(func() { testenv.DeleteNamespace(t, e.follower, name) })
		}
		mustCreateNamespace(t, e.follower, name)
	}
	t.Cleanup(func() { testenv.DeleteNamespace(t, e.follower, unlisted) })
	mustCreateNamespace(t, e.follower, unlisted)

	leaderKubeconfig := mustInstallNamespacedRBAC(t, e.leader, leaderObjs, withOwn(fresh, e.sysA))
	followerKubeconfig := mustInstallNamespacedRBAC(t, e.follower, followerObjs, withOwn(fresh, e.sysB))

	leaderCfg := e.config(true)
	leaderCfg.Kubeconfig = leaderKubeconfig
	mustApplyEnv(t, leaderCfg, leaderEnv, fresh)
	followerCfg := e.config(false)
	followerCfg.Kubeconfig = followerKubeconfig
	mustApplyEnv(t, followerCfg, followerEnv, fresh)
	if !leaderCfg.IsLeader() || followerCfg.IsLeader() || followerCfg.CreateNamespaces {
		t.Fatalf("rendered settings: leader LEADER=%q, follower LEADER=%q CREATE_NAMESPACES=%v; want 1, not 1, false",
			leaderCfg.Leader, followerCfg.Leader, followerCfg.CreateNamespaces)
	}

	var refused refusals
	e.startWrapped(leaderCfg, refused.wrap)
	e.startWrapped(followerCfg, refused.wrap)
	src, dst := e.secrets(e.leader), e.secrets(e.follower)

	// A Secret in each listed namespace syncs.
	mustCreate(t, src, labelled("tls", map[string]string{"tls.crt": "CERT", "tls.key": secretValue}))
	e.waitSynced("tls")
	for _, ns := range listed[1:] {
		c := e.leader.Clientset.CoreV1().Secrets(fresh[ns])
		mustCreate(t, c, labelled("token", map[string]string{"token": secretValue}))
		waitSyncedIn(t, e, fresh[ns], "token")
	}

	// A labelled Secret of an unlisted namespace is not read at all: no
	// row for it, no copy. There is no event to wait for; the update of
	// "tls", made after it and synced, gives a wrongly watched stray Secret
	// the time to reach the database and the follower.
	mustCreate(t, e.leader.Clientset.CoreV1().Secrets(unlisted), labelled("stray", map[string]string{"k": secretValue}))
	mustModify(t, src, "tls", func(s *corev1.Secret) { s.Data["tls.crt"] = []byte("RENEWED") })
	e.waitSynced("tls")
	db := e.dbConn()
	rowsOfUnlisted := func() int {
		t.Helper()
		var n int
		if err := db.QueryRow(t.Context(), `SELECT count(*) FROM kss_secrets WHERE namespace = $1`, unlisted).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := rowsOfUnlisted(); n != 0 {
		t.Errorf("%d rows for the unlisted namespace %s; want none", n, unlisted)
	}
	if _, err := e.follower.Clientset.CoreV1().Secrets(unlisted).Get(t.Context(), "stray", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("follower: get %s/stray = %v; want NotFound", unlisted, err)
	}

	// A same-named unmanaged Secret in the follower is left alone, and the
	// Warning Event on it needs the Events grant of the listed namespace.
	mine := mustCreate(t, dst, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "local"}, Data: map[string][]byte{"k": []byte("mine")}})
	mustCreate(t, src, labelled("local", map[string]string{"k": secretValue}))
	e.waitEvent("local", "NotManaged")
	got, err := dst.Get(t.Context(), "local", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("unmanaged Secret local: %v", err)
	}
	if got.ResourceVersion != mine.ResourceVersion {
		t.Errorf("unmanaged Secret local: resourceVersion %s -> %s; want it untouched", mine.ResourceVersion, got.ResourceVersion)
	}

	// Deletion propagates: a tombstone deletes the copy.
	if err := src.Delete(t.Context(), "tls", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("tls")

	// The database may also hold rows of namespaces this follower does not
	// list, for example from a cluster-wide leader elsewhere. Here one is
	// written under the writer's claim (with the administrator's
	// credentials); the namespaced follower must pass over it without an
	// API call, and keep applying the rows after it.
	store := mustOpenStore(t, e.dsn)
	claim, err := store.ReadClaim(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Write(t.Context(), claim.Claim, "kid", []Change{change(unlisted, "stray", 1)}, labelSeal); err != nil {
		t.Fatal(err)
	}
	eventually(t, syncTimeout, func() error {
		if rowsOfUnlisted() == 0 {
			return fmt.Errorf("no row for %s/stray yet", unlisted)
		}
		return nil
	})
	mustCreate(t, src, labelled("after-stray", map[string]string{"k": "v"}))
	e.waitSynced("after-stray")
	if _, err := e.follower.Clientset.CoreV1().Secrets(unlisted).Get(t.Context(), "stray", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("follower: get %s/stray = %v; want NotFound", unlisted, err)
	}

	// Nothing above was achieved by retrying past a refusal: neither
	// daemon made a single request that RBAC refused (its informers'
	// errors go to klog, so the transport is watched, not only the logs).
	if r := refused.list(); len(r) > 0 {
		t.Errorf("requests refused as forbidden:\n%s", strings.Join(r, "\n"))
	}
	for line := range strings.Lines(e.logs.String()) {
		if strings.Contains(strings.ToLower(line), "forbidden") {
			t.Errorf("log line mentions forbidden: %s", line)
		}
	}
}

// withOwn returns the namespace mapping for one cluster: the listed
// namespaces' fresh names, and the daemon's own namespace's.
func withOwn(listed map[string]string, own string) map[string]string {
	m := maps.Clone(listed)
	m[overlayNamespace] = own
	return m
}

// waitSyncedIn waits until the follower's copy of ns/name equals the
// leader's.
func waitSyncedIn(t *testing.T, e *syncEnv, ns, name string) {
	t.Helper()
	eventually(t, syncTimeout, func() error {
		src, err := e.leader.Clientset.CoreV1().Secrets(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		dst, err := e.follower.Clientset.CoreV1().Secrets(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		return copyMatches(src, dst)
	})
}

func mustCreateNamespace(t *testing.T, c *testenv.Cluster, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Clientset.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s in %s: %v", name, c.Name, err)
	}
}

// rendered is one object of a rendered overlay, kept as JSON.
type rendered struct {
	kind, namespace, name string
	raw                   []byte
}

func (r rendered) into(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.raw, v); err != nil {
		t.Fatalf("decode %s %s/%s: %v", r.kind, r.namespace, r.name, err)
	}
}

// mustRender renders a kustomization with kubectl's built-in kustomize, the
// way `kubectl apply -k` would.
func mustRender(t *testing.T, dir string) []rendered {
	t.Helper()
	kubectl, err := testenv.Kubectl()
	if err != nil {
		testenv.Missing(t, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, kubectl, "kustomize", dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	var objs []rendered
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(out)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("kubectl kustomize %s: %v", dir, err)
		}
		raw, err := utilyaml.ToJSON(doc)
		if err != nil {
			t.Fatalf("kubectl kustomize %s: %v", dir, err)
		}
		var meta metav1.PartialObjectMetadata
		if err := json.Unmarshal(raw, &meta); err != nil {
			t.Fatalf("kubectl kustomize %s: %v", dir, err)
		}
		if meta.Kind != "" {
			objs = append(objs, rendered{meta.Kind, meta.Namespace, meta.Name, raw})
		}
	}
}

// mustDeploymentEnv returns the literal environment variables of the
// rendered Deployment's container.
func mustDeploymentEnv(t *testing.T, objs []rendered) map[string]string {
	t.Helper()
	for _, obj := range objs {
		if obj.kind != "Deployment" {
			continue
		}
		var d appsv1.Deployment
		obj.into(t, &d)
		env := map[string]string{}
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, v := range c.Env {
				if v.ValueFrom == nil {
					env[v.Name] = v.Value
				}
			}
		}
		return env
	}
	t.Fatal("no Deployment in the rendered overlay")
	return nil
}

// mustApplyEnv sets in cfg the settings of the rendered Deployment that
// decide which API requests the daemon makes, renaming the namespaces of
// NAMESPACES.
func mustApplyEnv(t *testing.T, cfg *Config, env map[string]string, rename map[string]string) {
	t.Helper()
	for name, value := range env {
		switch name {
		case "LEADER":
			cfg.Leader = value
		case "NAMESPACES":
			cfg.Namespaces = nil
			for _, ns := range strings.Split(value, ",") {
				if rename[ns] == "" {
					t.Fatalf("NAMESPACES lists %q, which the test does not map", ns)
				}
				cfg.Namespaces = append(cfg.Namespaces, rename[ns])
			}
		case "EXCLUDE_NAMESPACES", "LEASE_NAME", "LABEL_SELECTOR":
			// They would change what the daemon touches (and the Lease's
			// and cursor's names are fixed in the Roles); the overlays
			// leave them at their defaults, as the test does.
			t.Fatalf("the overlay sets %s; the test does not support it", name)
		case "CREATE_NAMESPACES":
			v, err := strconv.ParseBool(value)
			if err != nil {
				t.Fatalf("CREATE_NAMESPACES=%q: %v", value, err)
			}
			cfg.CreateNamespaces = v
		}
	}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
}

// mustInstallNamespacedRBAC creates the rendered overlay's Roles and
// RoleBindings in c, each in the namespace that rename maps its own to, and
// returns a kubeconfig that acts as the overlay's ServiceAccount (moved to
// the daemon's namespace likewise). A namespaced overlay must grant nothing
// cluster-wide.
func mustInstallNamespacedRBAC(t *testing.T, c *testenv.Cluster, objs []rendered, rename map[string]string) string {
	t.Helper()
	renamed := func(ns string) string {
		t.Helper()
		if rename[ns] == "" {
			t.Fatalf("the overlay uses namespace %q, which the test does not map", ns)
		}
		return rename[ns]
	}
	rbac := c.Clientset.RbacV1()
	for _, obj := range objs {
		switch obj.kind {
		case "ClusterRole", "ClusterRoleBinding":
			t.Fatalf("%s %s: a namespaced install must grant nothing cluster-wide", obj.kind, obj.name)
		case "Role":
			var r rbacv1.Role
			obj.into(t, &r)
			r.Namespace = renamed(r.Namespace)
			if _, err := rbac.Roles(r.Namespace).Create(t.Context(), &r, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create Role %s/%s: %v", r.Namespace, r.Name, err)
			}
		case "RoleBinding":
			var b rbacv1.RoleBinding
			obj.into(t, &b)
			b.Namespace = renamed(b.Namespace)
			for i, s := range b.Subjects {
				if s.Kind != rbacv1.ServiceAccountKind || s.Name != overlayServiceAccount || s.Namespace != overlayNamespace {
					t.Fatalf("RoleBinding %s binds %+v; want only the daemon's ServiceAccount", b.Name, s)
				}
				b.Subjects[i].Namespace = renamed(s.Namespace)
			}
			if _, err := rbac.RoleBindings(b.Namespace).Create(t.Context(), &b, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create RoleBinding %s/%s: %v", b.Namespace, b.Name, err)
			}
		}
	}

	// The daemon reads a kubeconfig that impersonates the ServiceAccount,
	// with the groups the API server gives a ServiceAccount token; the
	// administrator's credentials only authorize the impersonation.
	own := renamed(overlayNamespace)
	kc, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range kc.AuthInfos {
		auth.Impersonate = "system:serviceaccount:" + own + ":" + overlayServiceAccount
		auth.ImpersonateGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + own, "system:authenticated"}
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}

	// The kubeconfig really acts as the ServiceAccount: it may not read
	// Secrets in the daemon's own namespace. And the Roles are in force
	// (the authorizer sees new ones after a moment): it may list the
	// Secrets of every namespace it has a Role in.
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sa.CoreV1().Secrets(own).List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("as the ServiceAccount: list Secrets in %s = %v; want Forbidden", own, err)
	}
	for ns, name := range rename {
		if ns == overlayNamespace {
			continue
		}
		eventually(t, syncTimeout, func() error {
			_, err := sa.CoreV1().Secrets(name).List(t.Context(), metav1.ListOptions{})
			return err
		})
	}
	return path
}

// refusals records the API requests that were refused as forbidden.
type refusals struct {
	mu   sync.Mutex
	reqs []string
}

func (r *refusals) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		if err == nil && resp.StatusCode == http.StatusForbidden {
			r.mu.Lock()
			r.reqs = append(r.reqs, req.Method+" "+req.URL.RequestURI())
			r.mu.Unlock()
		}
		return resp, err
	})
}

func (r *refusals) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}
