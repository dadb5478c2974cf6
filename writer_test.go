package main

// Unit tests of secretWriter's branches against client-go's fake clientset:
// which API calls each case makes, and which it must never make. That the
// calls do what they should on a real API server is shown by the
// end-to-end tests (sync_e2e_test.go, resilience_e2e_test.go).

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

func newTestWriter(objs ...runtime.Object) (*secretWriter, *fake.Clientset) {
	client := fake.NewClientset(objs...)
	log := logrus.New()
	log.SetOutput(nopWriter{})
	return &secretWriter{client: client, createNamespaces: true, log: logrus.NewEntry(log)}, client
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// calls lists the client's actions as "verb resource[/subresource] name".
func calls(c *fake.Clientset) []string {
	var out []string
	for _, a := range c.Actions() {
		s := a.GetVerb() + " " + a.GetResource().Resource
		switch a := a.(type) {
		case k8stesting.GetAction:
			s += " " + a.GetName()
		case k8stesting.DeleteAction:
			s += " " + a.GetName()
		case k8stesting.CreateAction:
			if m, err := metaOf(a.GetObject()); err == nil {
				s += " " + m.GetName()
			}
		case k8stesting.UpdateAction:
			if m, err := metaOf(a.GetObject()); err == nil {
				s += " " + m.GetName()
			}
		}
		out = append(out, s)
	}
	return out
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no metadata", obj)
	}
	return m, nil
}

// writerCopy is the copy of a TLS Secret at row version v.
func writerCopy(v int64, data string) *corev1.Secret {
	p := applyTestPayload()
	p.Data = map[string][]byte{"tls.crt": []byte(data), "tls.key": []byte("key")}
	return desiredCopy(ObjectKey{"web", "tls"}, p, v, "cluster-a")
}

// live is s as the API server holds it: with a UID, a resourceVersion and
// metadata that others own in this cluster.
func live(s *corev1.Secret) *corev1.Secret {
	s = s.DeepCopy()
	s.UID, s.ResourceVersion = "uid-live", "41"
	s.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "local-owner", UID: "owner"}}
	s.Finalizers = []string{"example.com/local"}
	return s
}

// checkWriterErr fails t unless err is what want says: nil for none, or a
// **errUnmanaged or **errRollback for that refusal.
func checkWriterErr(t *testing.T, call string, err error, want any) {
	t.Helper()
	ok := err == nil
	switch target := want.(type) {
	case **errUnmanaged:
		ok = errors.As(err, target)
	case **errRollback:
		ok = errors.As(err, target)
	}
	if !ok {
		t.Fatalf("%s() error = %v; want %T", call, err, want)
	}
}

func webNamespace() *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "web"}}
}

func TestWriterApply(t *testing.T) {
	unmanaged := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "web", Name: "tls", UID: "uid-theirs"},
		Data:       map[string][]byte{"mine": []byte("keep")},
	}
	immutable := live(writerCopy(3, "old"))
	immutable.Immutable = ptr.To(true)
	retyped := live(writerCopy(3, "new"))
	retyped.Type = corev1.SecretTypeOpaque

	tests := []struct {
		name     string
		objs     []runtime.Object // in the cluster
		existing *corev1.Secret   // the caller's (cached) copy
		desired  *corev1.Secret
		want     plan
		wantErr  any // nil, **errUnmanaged or **errRollback
		calls    []string
	}{
		{
			name: "new copy: one create, no GET", objs: []runtime.Object{webNamespace()},
			desired: writerCopy(3, "new"), want: planCreate,
			calls: []string{"create namespaces web", "create secrets tls"},
		},
		{
			name:    "new copy in a missing namespace: the namespace is created first",
			desired: writerCopy(3, "new"), want: planCreate,
			calls: []string{"create namespaces web", "create secrets tls"},
		},
		{
			name: "name taken by an older managed copy: create, get, update",
			objs: []runtime.Object{webNamespace(), live(writerCopy(2, "old"))}, desired: writerCopy(3, "new"), want: planUpdate,
			calls: []string{"create namespaces web", "create secrets tls", "get secrets tls", "update secrets tls"},
		},
		{
			name: "name taken by an unmanaged Secret: left alone",
			objs: []runtime.Object{webNamespace(), unmanaged}, desired: writerCopy(3, "new"), wantErr: new(*errUnmanaged),
			calls: []string{"create namespaces web", "create secrets tls", "get secrets tls"},
		},
		{
			name: "cached unmanaged Secret: no call at all",
			objs: []runtime.Object{unmanaged}, existing: unmanaged, desired: writerCopy(3, "new"), wantErr: new(*errUnmanaged),
		},
		{
			name:     "copy already equal: no call",
			objs:     []runtime.Object{live(writerCopy(3, "same"))},
			existing: live(writerCopy(3, "same")), desired: writerCopy(3, "same"), want: planNone,
		},
		{
			name:     "data changed: one update",
			objs:     []runtime.Object{live(writerCopy(2, "old"))},
			existing: live(writerCopy(2, "old")), desired: writerCopy(3, "new"), want: planUpdate,
			calls: []string{"update secrets tls"},
		},
		{
			name:     "older row than the copy: rollback refused",
			objs:     []runtime.Object{live(writerCopy(5, "newer"))},
			existing: live(writerCopy(5, "newer")), desired: writerCopy(3, "older"), wantErr: new(*errRollback),
		},
		{
			name:     "immutable copy changed: delete (UID precondition) and create",
			objs:     []runtime.Object{webNamespace(), immutable},
			existing: immutable, desired: writerCopy(4, "new"), want: planRecreate,
			calls: []string{"delete secrets tls", "create namespaces web", "create secrets tls"},
		},
		{
			name:     "type changed: delete and create",
			objs:     []runtime.Object{webNamespace(), retyped},
			existing: retyped, desired: writerCopy(4, "new"), want: planRecreate,
			calls: []string{"delete secrets tls", "create namespaces web", "create secrets tls"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, client := newTestWriter(tt.objs...)
			got, err := w.apply(t.Context(), tt.desired, tt.existing)
			checkWriterErr(t, "apply", err, tt.wantErr)
			if tt.wantErr == nil && got != tt.want {
				t.Errorf("apply() = %v; want %v", got, tt.want)
			}
			if c := calls(client); strings.Join(c, ", ") != strings.Join(tt.calls, ", ") {
				t.Errorf("API calls = %q; want %q", c, tt.calls)
			}
			if tt.wantErr != nil {
				return
			}
			s, err := client.CoreV1().Secrets("web").Get(t.Context(), "tls", metav1.GetOptions{})
			if err != nil {
				t.Fatalf("after apply: %v", err)
			}
			if planFor(s, tt.desired) != planNone {
				t.Errorf("after apply the copy still differs from the desired one")
			}
			if got == planUpdate && len(s.OwnerReferences) == 0 {
				t.Errorf("update dropped the ownerReferences owned in this cluster")
			}
		})
	}
}

// TestWriterApplyDetails covers what the call list does not show: the
// UID precondition of a recreation's delete, the trimmed managedFields
// never sent back, and a name taken between delete and create.
func TestWriterApplyDetails(t *testing.T) {
	t.Run("recreate deletes the very copy it compared", func(t *testing.T) {
		existing := live(writerCopy(3, "old"))
		existing.Immutable = ptr.To(true)
		w, client := newTestWriter(webNamespace(), existing)
		if _, err := w.apply(t.Context(), writerCopy(4, "new"), existing); err != nil {
			t.Fatal(err)
		}
		for _, a := range client.Actions() {
			if d, ok := a.(k8stesting.DeleteAction); ok {
				pre := d.GetDeleteOptions().Preconditions
				if pre == nil || pre.UID == nil || *pre.UID != existing.UID || pre.ResourceVersion == nil || *pre.ResourceVersion != existing.ResourceVersion {
					t.Errorf("delete preconditions = %+v; want UID %s and resourceVersion %s", pre, existing.UID, existing.ResourceVersion)
				}
			}
		}
	})
	t.Run("update sends no managedFields", func(t *testing.T) {
		existing := live(writerCopy(2, "old"))
		w, client := newTestWriter(existing)
		read := existing.DeepCopy()
		now := metav1.Now()
		read.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kube-secret-sync", Time: &now, FieldsV1: metav1.NewFieldsV1(`{"f:data":{}}`)}}
		if _, err := w.apply(t.Context(), writerCopy(3, "new"), read); err != nil {
			t.Fatal(err)
		}
		for _, a := range client.Actions() {
			if u, ok := a.(k8stesting.UpdateAction); ok {
				if s := u.GetObject().(*corev1.Secret); s.ManagedFields != nil {
					t.Errorf("update sent managedFields %+v", s.ManagedFields)
				}
			}
		}
	})
	t.Run("name taken between delete and create: never taken over", func(t *testing.T) {
		existing := live(writerCopy(3, "old"))
		existing.Immutable = ptr.To(true)
		w, client := newTestWriter(webNamespace(), existing)
		client.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewAlreadyExists(schema.GroupResource{Resource: "secrets"}, "tls")
		})
		_, err := w.apply(t.Context(), writerCopy(4, "new"), existing)
		var unmanaged *errUnmanaged
		if !errors.As(err, &unmanaged) {
			t.Errorf("apply() error = %v; want errUnmanaged", err)
		}
	})
	t.Run("namespace deleted since it was seen: created again", func(t *testing.T) {
		w, client := newTestWriter(webNamespace())
		w.namespaces.Store("web", struct{}{}) // seen before
		first := true
		client.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
			if first {
				first = false
				return true, nil, apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "web")
			}
			return false, nil, nil
		})
		if _, err := w.apply(t.Context(), writerCopy(3, "new"), nil); err != nil {
			t.Fatal(err)
		}
		want := []string{"create secrets tls", "create namespaces web", "create secrets tls"}
		if c := calls(client); strings.Join(c, ", ") != strings.Join(want, ", ") {
			t.Errorf("API calls = %q; want %q", c, want)
		}
	})
	t.Run("CREATE_NAMESPACES=false: never creates one", func(t *testing.T) {
		w, client := newTestWriter()
		w.createNamespaces = false
		client.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "web")
		})
		if _, err := w.apply(t.Context(), writerCopy(3, "new"), nil); !apierrors.IsNotFound(err) {
			t.Errorf("apply() error = %v; want NotFound", err)
		}
		want := []string{"create secrets tls"}
		if c := calls(client); strings.Join(c, ", ") != strings.Join(want, ", ") {
			t.Errorf("API calls = %q; want %q", c, want)
		}
	})
	t.Run("concurrent creates into a new namespace create it once", func(t *testing.T) {
		w, client := newTestWriter()
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Go(func() {
				s := writerCopy(3, "new")
				s.Name = fmt.Sprintf("tls-%d", i)
				if _, err := w.apply(t.Context(), s, nil); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		n := 0
		for _, c := range calls(client) {
			if strings.HasPrefix(c, "create namespaces") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("namespace created %d times; want once", n)
		}
	})
}

func TestWriterRemove(t *testing.T) {
	unmanaged := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "web", Name: "tls", UID: "uid-theirs"}}
	tests := []struct {
		name     string
		existing *corev1.Secret
		version  int64
		deleted  bool
		wantErr  any
		calls    []string
	}{
		{name: "no cached copy: nothing of ours to delete", version: 4},
		{name: "unmanaged Secret: left alone", existing: unmanaged, version: 4, wantErr: new(*errUnmanaged)},
		{name: "tombstone older than the copy: rollback refused", existing: live(writerCopy(5, "x")), version: 4, wantErr: new(*errRollback)},
		{name: "managed copy: deleted", existing: live(writerCopy(3, "x")), version: 4, deleted: true, calls: []string{"delete secrets tls"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var objs []runtime.Object
			if tt.existing != nil {
				objs = append(objs, tt.existing)
			}
			w, client := newTestWriter(objs...)
			deleted, err := w.remove(t.Context(), ObjectKey{"web", "tls"}, tt.version, tt.existing, nil)
			checkWriterErr(t, "remove", err, tt.wantErr)
			if deleted != tt.deleted {
				t.Errorf("remove() deleted = %v; want %v", deleted, tt.deleted)
			}
			if c := calls(client); strings.Join(c, ", ") != strings.Join(tt.calls, ", ") {
				t.Errorf("API calls = %q; want %q", c, tt.calls)
			}
		})
	}
}
