package main

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestCursorStore: the follower's cursor survives a restart in its
// ConfigMap, and a ConfigMap written by a previous Lease holder, or
// deleted by hand, is overwritten rather than failing the pass.
func TestCursorStore(t *testing.T) {
	newStore := func(objs ...*corev1.ConfigMap) (*cursorStore, *fake.Clientset) {
		client := fake.NewClientset()
		for _, cm := range objs {
			if _, err := client.CoreV1().ConfigMaps(cm.Namespace).Create(t.Context(), cm, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		client.ClearActions()
		return &cursorStore{client: client, namespace: "kss", name: "kube-secret-sync-state"}, client
	}
	stored := func(v, ns, name string) *corev1.ConfigMap {
		return &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: "kss", Name: "kube-secret-sync-state"},
			Data:       map[string]string{"version": v, "namespace": ns, "name": name},
		}
	}
	mustLoad := func(s *cursorStore) Cursor {
		t.Helper()
		c, err := s.load(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("none yet: from the start", func(t *testing.T) {
		s, _ := newStore()
		if c := mustLoad(s); c != (Cursor{}) {
			t.Errorf("load() = %+v; want the zero cursor", c)
		}
	})
	t.Run("round trip through a restart", func(t *testing.T) {
		s, client := newStore()
		mustLoad(s)
		want := Cursor{42, "web", "tls"}
		if err := s.save(t.Context(), want); err != nil {
			t.Fatal(err)
		}
		if err := s.save(t.Context(), Cursor{43, "web", "tls-2"}); err != nil {
			t.Fatal(err)
		}
		if c := calls(client); strings.Join(c, ", ") != "get configmaps kube-secret-sync-state, create configmaps kube-secret-sync-state, update configmaps kube-secret-sync-state" {
			t.Errorf("API calls = %q; want the load's get, then one create and one update", c)
		}
		restarted := &cursorStore{client: client, namespace: "kss", name: "kube-secret-sync-state"}
		if c := mustLoad(restarted); c != (Cursor{43, "web", "tls-2"}) {
			t.Errorf("after a restart load() = %+v; want the last saved cursor", c)
		}
	})
	t.Run("written meanwhile by another replica: overwritten once", func(t *testing.T) {
		s, client := newStore()
		mustLoad(s) // nothing there yet
		if _, err := client.CoreV1().ConfigMaps("kss").Create(t.Context(), stored("7", "a", "b"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := s.save(t.Context(), Cursor{9, "c", "d"}); err != nil {
			t.Fatalf("save() over a ConfigMap created meanwhile: %v", err)
		}
		if c := mustLoad(s); c != (Cursor{9, "c", "d"}) {
			t.Errorf("load() = %+v; want the cursor just saved", c)
		}
	})
	t.Run("deleted by hand: created again", func(t *testing.T) {
		s, client := newStore(stored("7", "a", "b"))
		mustLoad(s)
		if err := client.CoreV1().ConfigMaps("kss").Delete(t.Context(), "kube-secret-sync-state", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := s.save(t.Context(), Cursor{9, "c", "d"}); err != nil {
			t.Fatalf("save() after the ConfigMap was deleted: %v", err)
		}
		if c := mustLoad(s); c != (Cursor{9, "c", "d"}) {
			t.Errorf("load() = %+v; want the cursor just saved", c)
		}
	})
	for _, garbage := range []string{"seven", "", "-3", "99999999999999999999"} {
		t.Run("version "+strconv.Quote(garbage)+" is errBadCursor", func(t *testing.T) {
			s, _ := newStore(stored(garbage, "a", "b"))
			if c, err := s.load(t.Context()); !errors.Is(err, errBadCursor) {
				t.Errorf("load() = %+v, %v; want errBadCursor", c, err)
			}
			// The garbage is overwritten by the next save.
			if err := s.save(t.Context(), Cursor{1, "a", "b"}); err != nil {
				t.Fatal(err)
			}
			if c := mustLoad(s); c != (Cursor{1, "a", "b"}) {
				t.Errorf("after a save load() = %+v", c)
			}
		})
	}
}
