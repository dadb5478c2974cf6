package main

// End-to-end tests of the sync: a real PostgreSQL database, two real
// kube-apiservers (cluster a runs the leader, cluster b the follower) and
// the daemon's run function, exactly as main calls it.

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestSyncLifecycle(t *testing.T) {
	e := newSyncEnv(t)
	e.startPair()
	src := e.secrets(e.leader)

	// The synced namespace exists only in the leader's cluster: the
	// follower creates it.
	if _, err := e.follower.Clientset.CoreV1().Namespaces().Get(t.Context(), e.ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("namespace %s exists in the follower before the sync (err %v)", e.ns, err)
	}
	tls := labelled("tls", map[string]string{"tls.crt": "CERT", "tls.key": secretValue, "ca.crt": "CA"})
	tls.Type = corev1.SecretTypeTLS
	tls.Labels["app"] = "web"
	tls.Annotations = map[string]string{"cert-manager.io/certificate-name": "web", lastAppliedAnnotation: "{}"}
	mustCreate(t, src, tls)
	copy := e.waitSynced("tls")
	if _, ok := copy.Annotations[lastAppliedAnnotation]; ok {
		t.Errorf("copy carries %s", lastAppliedAnnotation)
	}

	t.Run("value change", func(t *testing.T) {
		mustModify(t, src, "tls", func(s *corev1.Secret) { s.Data["tls.crt"] = []byte("RENEWED") })
		e.waitSynced("tls")
	})
	t.Run("key removed", func(t *testing.T) {
		mustModify(t, src, "tls", func(s *corev1.Secret) { delete(s.Data, "ca.crt") })
		if got := e.waitSynced("tls"); got.Data["ca.crt"] != nil {
			t.Errorf("ca.crt still in the copy")
		}
	})
	t.Run("labels and annotations", func(t *testing.T) {
		mustModify(t, src, "tls", func(s *corev1.Secret) {
			s.Labels["tier"] = "edge"
			delete(s.Labels, "app")
			s.Annotations["note"] = "moved"
		})
		e.waitSynced("tls")
	})
	t.Run("type change", func(t *testing.T) {
		// Type is immutable in the API: the source is recreated, and so
		// must the copy be.
		if err := src.Delete(t.Context(), "tls", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		opaque := labelled("tls", map[string]string{"token": secretValue})
		mustCreate(t, src, opaque)
		if got := e.waitSynced("tls"); got.Type != corev1.SecretTypeOpaque {
			t.Errorf("type = %s; want Opaque", got.Type)
		}
	})
	t.Run("immutable", func(t *testing.T) {
		im := labelled("frozen", map[string]string{"v": "1"})
		im.Immutable = ptr.To(true)
		mustCreate(t, src, im)
		e.waitSynced("frozen")
		// An immutable Secret changes only by recreation.
		if err := src.Delete(t.Context(), "frozen", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		im2 := labelled("frozen", map[string]string{"v": "2"})
		im2.Immutable = ptr.To(true)
		mustCreate(t, src, im2)
		if got := e.waitSynced("frozen"); string(got.Data["v"]) != "2" {
			t.Errorf("frozen v = %q; want 2", got.Data["v"])
		}
	})
	t.Run("unlabel", func(t *testing.T) {
		mustModify(t, src, "tls", func(s *corev1.Secret) { delete(s.Labels, "kube-secret-sync") })
		e.waitGone("tls")
	})
	t.Run("delete", func(t *testing.T) {
		mustCreate(t, src, labelled("doomed", map[string]string{"k": "v"}))
		e.waitSynced("doomed")
		if err := src.Delete(t.Context(), "doomed", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.waitGone("doomed")
	})
	t.Run("relabel after unlabel", func(t *testing.T) {
		mustModify(t, src, "tls", func(s *corev1.Secret) { s.Labels = map[string]string{"kube-secret-sync": "true"} })
		e.waitSynced("tls")
	})
}

func TestOwnerReferencesAndFinalizersNotCopied(t *testing.T) {
	e := newSyncEnv(t)
	e.startPair()
	src := e.secrets(e.leader)
	owner := mustCreate(t, src, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "owner"}})
	s := labelled("owned", map[string]string{"k": secretValue})
	s.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Secret", Name: owner.Name, UID: owner.UID}}
	s.Finalizers = []string{"example.com/keep"}
	mustCreate(t, src, s)
	got := e.waitSynced("owned") // copyMatches refuses ownerReferences and finalizers
	if got.UID == owner.UID || got.ResourceVersion == "" {
		t.Errorf("copy has the source's identity")
	}
	// Let the namespace go away at cleanup.
	mustModify(t, src, "owned", func(s *corev1.Secret) { s.Finalizers = nil })
}

func TestUnmanagedSecretIsLeftAlone(t *testing.T) {
	e := newSyncEnv(t)
	dst := e.follower.Clientset.CoreV1().Secrets(e.ns)
	if _, err := e.follower.Clientset.CoreV1().Namespaces().Create(t.Context(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mine := mustCreate(t, dst, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "shared-name", Labels: map[string]string{"owner": "team-b"}},
		Data:       map[string][]byte{"local": []byte("keep me")},
	})
	e.startPair()
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("shared-name", map[string]string{"k": secretValue}))
	mustCreate(t, src, labelled("other", map[string]string{"k": "v"}))
	e.waitSynced("other")
	// The conflict is reported with an Event on the unmanaged Secret.
	e.waitEvent("shared-name", "NotManaged")
	// Deleting the source writes a tombstone; the unmanaged Secret must
	// survive that too.
	if err := src.Delete(t.Context(), "shared-name", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := src.Delete(t.Context(), "other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("other") // the tombstones have been processed
	got, err := dst.Get(t.Context(), "shared-name", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("unmanaged Secret: %v", err)
	}
	if got.ResourceVersion != mine.ResourceVersion || string(got.Data["local"]) != "keep me" {
		t.Errorf("unmanaged Secret was modified: rv %s -> %s, data %v", mine.ResourceVersion, got.ResourceVersion, keysOf(got.Data))
	}
}
