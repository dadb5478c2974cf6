package main

// End-to-end tests that one bad Secret, one damaged row or one routine
// change never stops, stalls or corrupts the replication of the others.

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// protobufSecrets is a Secrets client of c for the test's namespace that
// speaks protobuf, in which the API server accepts strings that are not
// valid UTF-8 (JSON would have replaced them).
func (e *syncEnv) protobufSecrets(c *testenv.Cluster) secretsClient {
	e.t.Helper()
	rc := rest.CopyConfig(c.Config)
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		e.t.Fatal(err)
	}
	return cs.CoreV1().Secrets(e.ns)
}

// TestUnsealableSecretStopsNothing: a labelled Secret whose annotation is
// not valid UTF-8 cannot be sealed faithfully. It is refused alone and
// reported once, while every other Secret keeps syncing, and it syncs as
// soon as it is fixed.
func TestUnsealableSecretStopsNothing(t *testing.T) {
	e := newSyncEnv(t)
	leader, _ := e.startPair()
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("before", map[string]string{"k": secretValue}))
	e.waitSynced("before")

	bad := labelled("bad", map[string]string{"k": secretValue})
	bad.Annotations = map[string]string{"note": "caf\xe9"}
	created := mustCreate(t, e.protobufSecrets(e.leader), bad)
	if created.Annotations["note"] != "caf\xe9" {
		t.Fatalf("the API server rewrote the annotation to %q: the test needs it invalid", created.Annotations["note"])
	}
	mustCreate(t, src, labelled("after", map[string]string{"k": secretValue}))
	mustModify(t, src, "before", func(s *corev1.Secret) { s.Data["k"] = []byte("changed after the bad one") })
	e.waitSynced("after")
	e.waitSynced("before")
	e.waitEventIn(e.leader, "bad", "NotSynced")
	leader.waitMetric(t, `kube_secret_sync_row_errors_total{reason="invalid"}`, 1)

	// Reported once: full passes every second retry nothing while the
	// Secret does not change.
	passes := leader.metric(t, `kube_secret_sync_reconciles_total{kind="full",result="ok"}`)
	leader.waitMetric(t, `kube_secret_sync_reconciles_total{kind="full",result="ok"}`, passes+3)
	if n := leader.metric(t, `kube_secret_sync_row_errors_total{reason="invalid"}`); n != 1 {
		t.Errorf("row_errors_total{reason=invalid} = %v after more passes; want 1 (reported once)", n)
	}
	if _, err := e.secrets(e.follower).Get(t.Context(), "bad", metav1.GetOptions{}); err == nil {
		t.Error("the unsealable Secret reached the follower")
	}

	// Fixed at the source: synced like any other.
	mustModify(t, e.protobufSecrets(e.leader), "bad", func(s *corev1.Secret) { s.Annotations["note"] = "café" })
	e.waitSynced("bad")
}
