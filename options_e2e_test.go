package main

// End-to-end tests of the settings that change what is synced.

import (
	"bytes"
	"fmt"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// secondNamespace creates another synced namespace in the leader's
// cluster (and, if inFollower, in the follower's) and returns it.
func (e *syncEnv) secondNamespace(inFollower bool) string {
	e.t.Helper()
	ns := testenv.Namespace(e.t, e.leader)
	if inFollower {
		if _, err := e.follower.Clientset.CoreV1().Namespaces().Create(e.t.Context(),
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			e.t.Fatal(err)
		}
	}
	follower := e.follower
	e.t.Cleanup(func() { testenv.DeleteNamespace(e.t, follower, ns) })
	return ns
}

func TestExcludedNamespaceIsNotSynced(t *testing.T) {
	e := newSyncEnv(t)
	excluded := e.secondNamespace(false)
	leader, follower := e.config(true), e.config(false)
	for _, c := range []*Config{leader, follower} {
		c.Namespaces = append(c.Namespaces, excluded)
		c.ExcludeNamespaces = []string{excluded}
	}
	l := e.start(leader)
	f := e.start(follower)
	mustCreate(t, e.leader.Clientset.CoreV1().Secrets(excluded), labelled("hidden", map[string]string{"k": secretValue}))
	mustCreate(t, e.secrets(e.leader), labelled("shown", map[string]string{"k": "v"}))
	e.waitSynced("shown")
	l.waitMetric(t, fullOK, l.metric(t, fullOK)+1)
	f.waitMetric(t, fullOK, f.metric(t, fullOK)+1)
	if n := l.metric(t, "kube_secret_sync_rows_written_total"); n != 1 {
		t.Errorf("leader wrote %v rows; want 1 (the excluded namespace's Secret must stay out of the database)", n)
	}
	if _, err := e.follower.Clientset.CoreV1().Namespaces().Get(t.Context(), excluded, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("excluded namespace %s exists in the follower (err %v)", excluded, err)
	}
}

func TestDeletePolicyRetainKeepsTheCopy(t *testing.T) {
	e := newSyncEnv(t)
	follower := e.config(false)
	follower.DeletePolicy = deletePolicyRetain
	e.start(e.config(true))
	f := e.start(follower)
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("kept", map[string]string{"k": secretValue}))
	copy := e.waitSynced("kept")
	if err := src.Delete(t.Context(), "kept", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// A Secret created after the deletion has arrived, so the tombstone
	// has been pulled; a full pass has seen it too.
	mustCreate(t, src, labelled("marker", map[string]string{"k": "v"}))
	e.waitSynced("marker")
	f.waitMetric(t, fullOK, f.metric(t, fullOK)+1)
	got, err := e.secrets(e.follower).Get(t.Context(), "kept", metav1.GetOptions{})
	if err != nil || got.UID != copy.UID {
		t.Errorf("DELETE_POLICY=retain: copy deleted or replaced (err %v)", err)
	}
}

func TestMissingNamespaceWithoutCreateBlocksNothingElse(t *testing.T) {
	e := newSyncEnv(t)
	present := e.secondNamespace(true)
	leader, follower := e.config(true), e.config(false)
	leader.Namespaces = append(leader.Namespaces, present)
	follower.Namespaces = append(follower.Namespaces, present)
	follower.CreateNamespaces = false
	e.start(leader)
	f := e.start(follower)
	mustCreate(t, e.secrets(e.leader), labelled("nowhere", map[string]string{"k": secretValue}))
	mustCreate(t, e.leader.Clientset.CoreV1().Secrets(present), labelled("somewhere", map[string]string{"k": "v"}))
	eventually(t, syncTimeout, func() error {
		_, err := e.follower.Clientset.CoreV1().Secrets(present).Get(t.Context(), "somewhere", metav1.GetOptions{})
		return err
	})
	f.waitMetric(t, `kube_secret_sync_row_errors_total{reason="api"}`, 1)
	if _, err := e.follower.Clientset.CoreV1().Namespaces().Get(t.Context(), e.ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("CREATE_NAMESPACES=false: namespace %s was created (err %v)", e.ns, err)
	}
}

func TestLargestSecretSyncs(t *testing.T) {
	e := newSyncEnv(t)
	e.startPair()
	// The API server's limit: 1 MiB of data in one Secret.
	big := labelled("big", nil)
	big.Data["blob"] = bytes.Repeat([]byte{0xa5}, 1<<20-64)
	mustCreate(t, e.secrets(e.leader), big)
	e.waitSynced("big")
}

// TestManyLargeSecretsFitTheMemoryLimit: 200 Secrets of nearly 1 MiB each
// sync with the real binaries under the Deployment's default memory limit
// (256 MiB, with the GOMEMLIMIT the daemon sets from it), and neither daemon's
// peak RSS exceeds it.
func TestManyLargeSecretsFitTheMemoryLimit(t *testing.T) {
	testenv.SkipShort(t)
	const n, limit = 200, 256 << 20
	bin := buildBinary(t)
	e := newSyncEnv(t)
	bins := e.startBinaries(t, bin, 5)
	src := e.secrets(e.leader)
	blob := bytes.Repeat([]byte{0x5a}, 1<<20-256)
	for i := range n {
		s := labelled(fmt.Sprintf("big-%03d", i), nil)
		s.Data["blob"] = blob
		mustCreate(t, src, s)
	}
	follower := bins.follower
	eventually(t, 3*time.Minute, func() error {
		created := follower.metric(t, `kube_secret_sync_rows_applied_total{action="created"}`)
		if created < n {
			return fmt.Errorf("%v of %d copies created", created, n)
		}
		return nil
	})
	// Changed at the source, and a copy edited by hand: both go through
	// the Secrets the caches keep without their data.
	mustModify(t, src, "big-007", func(s *corev1.Secret) { s.Data["blob"] = bytes.Repeat([]byte{0x7b}, 1<<20-256) })
	mustModify(t, e.secrets(e.follower), "big-011", func(s *corev1.Secret) { s.Data["blob"] = []byte("edited by hand") })
	e.waitSynced("big-007")
	e.waitSynced("big-011")
	bins.leader.waitMetric(t, fullOK, 2)
	for who, p := range map[string]*os.Process{"leader": bins.leaderProc, "follower": bins.followerProc} {
		peak := peakRSS(t, p.Pid)
		t.Logf("%s peak RSS %.0f MiB", who, float64(peak)/(1<<20))
		if peak > limit {
			t.Errorf("%s peak RSS %d MiB; want at most the 256 MiB limit", who, peak>>20)
		}
	}
}
