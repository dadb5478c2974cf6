package main

import (
	"fmt"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// TestNamespaceSelector: a leader with NAMESPACE_SELECTOR syncs the labelled
// Secrets of the namespaces whose labels match, and picks up a namespace
// that gains or loses the labels without a restart; the mass-deletion
// guard holds back a namespace's worth of deletes when one loses them.
func TestNamespaceSelector(t *testing.T) {
	testenv.SkipShort(t)
	e := newSyncEnv(t)
	blue, green := e.ns, testenv.Namespace(t, e.leader)
	t.Cleanup(func() { testenv.DeleteNamespace(t, e.follower, green) })
	team := testenv.UniqueName(t)
	setTeam := func(ns string, on bool) {
		t.Helper()
		patch := fmt.Sprintf(`{"metadata":{"labels":{"kss-team":%q}}}`, team)
		if !on {
			patch = `{"metadata":{"labels":{"kss-team":null}}}`
		}
		if _, err := e.leader.Clientset.CoreV1().Namespaces().Patch(t.Context(), ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	copyIn := func(ns, name string) bool {
		t.Helper()
		_, err := e.follower.Clientset.CoreV1().Secrets(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return err == nil
	}
	waitCopies := func(ns string, want bool, names ...string) {
		t.Helper()
		eventually(t, syncTimeout, func() error {
			for _, name := range names {
				if copyIn(ns, name) != want {
					return fmt.Errorf("copy %s/%s exists: %v; want %v", ns, name, !want, want)
				}
			}
			return nil
		})
	}
	setTeam(blue, true)
	lcfg := e.config(true)
	lcfg.Namespaces, lcfg.NamespaceSelector = nil, "kss-team="+team
	if err := lcfg.validate(); err != nil {
		t.Fatal(err)
	}
	fcfg := e.config(false)
	fcfg.Namespaces = []string{blue, green}
	leader, _ := e.start(lcfg), e.start(fcfg)

	mustCreate(t, e.leader.Clientset.CoreV1().Secrets(blue), labelled("a", nil))
	var greens []string
	for i := range 12 {
		greens = append(greens, fmt.Sprintf("g-%02d", i))
		mustCreate(t, e.leader.Clientset.CoreV1().Secrets(green), labelled(greens[i], nil))
	}
	waitCopies(blue, true, "a")
	// Two more full passes of the leader, and green is still not synced.
	full := `kube_secret_sync_reconciles_total{kind="full",result="ok"}`
	leader.waitMetric(t, full, leader.metric(t, full)+2)
	if copyIn(green, greens[0]) {
		t.Fatalf("copy %s/%s exists; its namespace does not match NAMESPACE_SELECTOR", green, greens[0])
	}

	setTeam(green, true)
	waitCopies(green, true, greens...)
	setTeam(blue, false)
	waitCopies(blue, false, "a")

	// Twelve deletes at once, all of the synced Secrets: held back.
	setTeam(green, false)
	leader.waitMetric(t, "kube_secret_sync_deletes_held", 12)
	waitCopies(green, true, greens...)
	setTeam(green, true)
	eventually(t, syncTimeout, func() error {
		if v := leader.metric(t, "kube_secret_sync_deletes_held"); v != 0 {
			return fmt.Errorf("deletes_held = %v once the namespace matches again; want 0", v)
		}
		return nil
	})
}
