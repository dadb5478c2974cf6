package main

// End-to-end tests of the settings that change what is synced.

import (
	"bytes"
	"testing"

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
