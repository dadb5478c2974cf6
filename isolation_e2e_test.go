package main

// End-to-end tests that one bad Secret, one damaged row or one routine
// change never stops, stalls or corrupts the replication of the others.

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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

// TestCredentialSecretsNeverLeave: a labelled service account token or
// bootstrap token is this cluster's credential. It is never copied, even
// when labelled, and a copy that an earlier version made is deleted.
func TestCredentialSecretsNeverLeave(t *testing.T) {
	e := newSyncEnv(t)
	leader, _ := e.startPair()
	src := e.secrets(e.leader)

	// A Secret synced before, then replaced by a token of the same name
	// (what an earlier version would have copied).
	mustCreate(t, src, labelled("token", map[string]string{"k": secretValue}))
	e.waitSynced("token")
	if err := src.Delete(t.Context(), "token", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := labelled("token", map[string]string{"token": secretValue})
	sa.Type = corev1.SecretTypeServiceAccountToken
	sa.Annotations = map[string]string{corev1.ServiceAccountNameKey: "default"}
	mustCreate(t, src, sa)
	boot := labelled("bootstrap-token-abcdef", map[string]string{"token-id": "abcdef", "token-secret": "0123456789abcdef"})
	boot.Type = corev1.SecretTypeBootstrapToken
	mustCreate(t, src, boot)
	mustCreate(t, src, labelled("after", map[string]string{"k": secretValue}))

	e.waitSynced("after")
	e.waitGone("token")
	e.waitEventIn(e.leader, "token", "NotSynced")
	e.waitEventIn(e.leader, "bootstrap-token-abcdef", "NotSynced")
	leader.waitMetric(t, `kube_secret_sync_row_errors_total{reason="credentials"}`, 2)
	passes := leader.metric(t, `kube_secret_sync_reconciles_total{kind="full",result="ok"}`)
	leader.waitMetric(t, `kube_secret_sync_reconciles_total{kind="full",result="ok"}`, passes+2)
	for _, name := range []string{"token", "bootstrap-token-abcdef"} {
		if _, err := e.secrets(e.follower).Get(t.Context(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("copy of the credential %s: err = %v; want NotFound", name, err)
		}
	}
	if n := leader.metric(t, `kube_secret_sync_row_errors_total{reason="credentials"}`); n != 2 {
		t.Errorf("row_errors_total{reason=credentials} = %v; want 2 (each reported once)", n)
	}
}

// TestSelectorTypoDeletesNothing: a leader restarted with a LABEL_SELECTOR
// that matches nothing would turn every row into a tombstone and every
// follower would delete its copies. The guard holds the deletes back, says
// so, and lets them through once the operator allows it; a few Secrets
// deleted on purpose propagate at once.
func TestSelectorTypoDeletesNothing(t *testing.T) {
	e := newSyncEnv(t)
	leader := e.start(e.config(true))
	e.start(e.config(false))
	src := e.secrets(e.leader)
	var names []string
	for i := range 14 {
		names = append(names, fmt.Sprintf("s-%d", i))
		mustCreate(t, src, labelled(names[i], map[string]string{"k": secretValue}))
	}
	for _, n := range names {
		e.waitSynced(n)
	}
	for _, n := range names[:2] {
		if err := src.Delete(t.Context(), n, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names[:2] {
		e.waitGone(n)
	}
	leader.stop(t)

	typo := e.config(true)
	typo.LabelSelector = "kube-secret-sync=ture"
	if err := typo.validate(); err != nil {
		t.Fatal(err)
	}
	held := e.start(typo)
	held.waitMetric(t, "kube_secret_sync_deletes_held", 12)
	if code := httpStatus(t, "http://"+held.metrics+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while deletes are held: %d; want 503", code)
	}
	passes := held.metric(t, fullOK)
	held.waitMetric(t, fullOK, passes+2)
	for _, n := range names[2:] {
		mustGet(t, e.secrets(e.follower), n)
	}
	if !strings.Contains(held.logs.String(), "holding deletes back") {
		t.Error("no log line says that deletes are held back")
	}
	held.stop(t)

	allow := e.config(true)
	allow.LabelSelector, allow.DeleteGuard = typo.LabelSelector, 100
	if err := allow.validate(); err != nil {
		t.Fatal(err)
	}
	e.start(allow)
	for _, n := range names[2:] {
		e.waitGone(n)
	}
}

// httpStatus returns the status code of a GET of url.
func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestRenamedLeaderTakesOver: a leader restarted under another
// CLUSTER_NAME (a follower promoted, a cluster renamed) takes over the rows
// of the Secrets it serves, so that deleting or unlabelling one afterwards
// still reaches the followers.
func TestRenamedLeaderTakesOver(t *testing.T) {
	e := newSyncEnv(t)
	old := e.start(e.config(true))
	e.start(e.config(false))
	src := e.secrets(e.leader)
	for _, n := range []string{"deleted", "unlabelled", "kept"} {
		mustCreate(t, src, labelled(n, map[string]string{"k": secretValue}))
	}
	for _, n := range []string{"deleted", "unlabelled", "kept"} {
		e.waitSynced(n)
	}
	old.stop(t)

	renamed := e.config(true)
	renamed.ClusterName = "cluster-new"
	e.start(renamed)
	eventually(t, syncTimeout, func() error {
		for _, n := range []string{"deleted", "unlabelled", "kept"} {
			if r := e.readRow(n); r.SourceCluster != "cluster-new" {
				return fmt.Errorf("row %s still from %q", n, r.SourceCluster)
			}
		}
		return nil
	})
	if err := src.Delete(t.Context(), "deleted", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	mustModify(t, src, "unlabelled", func(s *corev1.Secret) { delete(s.Labels, "kube-secret-sync") })
	e.waitGone("deleted")
	e.waitGone("unlabelled")
	e.waitSynced("kept")
}

// TestIdleWithConflictAndRetainedTombstone: a row that cannot be applied
// (a Secret of that name that the follower does not manage) or need not be
// (a tombstone under DELETE_POLICY=retain) is reported once per row
// version, and then costs no API request and no decryption per full pass;
// the conflict ends by itself when the unmanaged Secret is deleted.
func TestIdleWithConflictAndRetainedTombstone(t *testing.T) {
	e := newSyncEnv(t)
	mustCreateNamespace(t, e.follower, e.ns)
	e.start(e.config(true))
	fc := e.config(false)
	fc.DeletePolicy = deletePolicyRetain
	follower := e.start(fc)
	src := e.secrets(e.leader)
	mustCreate(t, e.secrets(e.follower), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "taken"}, Data: map[string][]byte{"mine": []byte("x")}})
	mustCreate(t, src, labelled("taken", map[string]string{"k": secretValue}))
	mustCreate(t, src, labelled("retained", map[string]string{"k": secretValue}))
	e.waitSynced("retained")
	if err := src.Delete(t.Context(), "retained", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitEvent("taken", "NotManaged")
	follower.waitMetric(t, `kube_secret_sync_rows_applied_total{action="retained"}`, 1)
	// Settled: from the next full pass on, nothing is attempted again.
	follower.waitMetric(t, fullOK, follower.metric(t, fullOK)+1)
	reads, writes := follower.writes.secretReads.Load(), follower.writes.secrets.Load()
	retained := follower.metric(t, `kube_secret_sync_rows_applied_total{action="retained"}`)
	conflicts := follower.metric(t, `kube_secret_sync_row_errors_total{reason="unmanaged"}`)
	follower.waitMetric(t, fullOK, follower.metric(t, fullOK)+3)
	if r, w := follower.writes.secretReads.Load(), follower.writes.secrets.Load(); r != reads || w != writes {
		t.Errorf("idle full passes made Secret requests: %d reads, %d writes", r-reads, w-writes)
	}
	if n := follower.metric(t, `kube_secret_sync_rows_applied_total{action="retained"}`); n != retained {
		t.Errorf("the retained tombstone was applied again: %v -> %v", retained, n)
	}
	if n := follower.metric(t, `kube_secret_sync_row_errors_total{reason="unmanaged"}`); n != conflicts {
		t.Errorf("the conflict was attempted again: %v -> %v", conflicts, n)
	}
	// A change of the row is a new version: tried (and reported) again.
	mustModify(t, src, "taken", func(s *corev1.Secret) { s.Data["k"] = []byte("changed") })
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="unmanaged"}`, conflicts+1)
	mine := mustGet(t, e.secrets(e.follower), "taken")
	if string(mine.Data["mine"]) != "x" || mine.Labels[managedLabel] != "" {
		t.Errorf("the unmanaged Secret was changed")
	}
	mustGet(t, e.secrets(e.follower), "retained")

	// The conflict ends when its unmanaged Secret goes: the copy comes,
	// with no change of the row.
	if err := e.secrets(e.follower).Delete(t.Context(), "taken", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitSynced("taken")
}
