package main

import (
	"bytes"
	"maps"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/fake"
)

// TestSlim: the cache keeps what the loops compare of a Secret, not its
// data, and the hashes it keeps are those of its full payload.
func TestSlim(t *testing.T) {
	ring := mustKeyring(t, configTestKey, strings.Repeat("o", 32))
	big := sourceSecret()
	big.Data["blob"] = bytes.Repeat([]byte{1}, 64<<10)
	big.UID, big.ResourceVersion = "uid-1", "42"
	big.Labels[managedLabel] = "true"
	big.Annotations = map[string]string{versionAnnotation: "17"}
	at := metav1.NewTime(big.CreationTimestamp.Add(time.Hour))
	big.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "cert-manager", Time: &at, FieldsV1: metav1.NewFieldsV1(`{"f:data":{}}`)}}
	want := map[string][]byte{}
	for _, id := range ring.IDs() {
		want[id], _ = ring.HashFor(id, big.Namespace, big.Name, payloadOf(big))
	}
	orig := big.DeepCopy()

	c := slim(big, ring, ring.IDs())
	if c.key() != (ObjectKey{orig.Namespace, orig.Name}) || c.uid != orig.UID || c.resourceVersion != orig.ResourceVersion || c.typ != orig.Type ||
		!c.managed || c.version != 17 {
		t.Errorf("slim = %+v; lost what the loops read of %+v", c, orig.ObjectMeta)
	}
	if c.sealedSize != ApproxSealedSize(payloadOf(orig)) {
		t.Errorf("sealedSize = %d; want %d", c.sealedSize, ApproxSealedSize(payloadOf(orig)))
	}
	for id, h := range want {
		if got, ok := c.hash(id); !ok || !bytes.Equal(got, h) {
			t.Errorf("hash(%s) = %x, %v; want the full payload's hash", id, got, ok)
		}
	}
	if _, ok := c.hash("0000000000000000"); ok {
		t.Error("hash of a key id not kept: ok")
	}
	if m := c.GetObjectMeta(); m.GetNamespace() != orig.Namespace || m.GetName() != orig.Name {
		t.Errorf("GetObjectMeta = %s/%s; the informer would key it wrongly", m.GetNamespace(), m.GetName())
	}
	plain := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "plain"}}
	if unlabelled := slim(plain, ring, ring.IDs()); unlabelled.managed || unlabelled.version != -1 {
		t.Errorf("slim of a source Secret: managed %v, version %d; want false, -1", unlabelled.managed, unlabelled.version)
	}
}

// TestCacheCounts: the per-namespace counts that decide between listing a
// namespace and getting each Secret (readLive) follow adds and deletes.
func TestCacheCounts(t *testing.T) {
	client := fake.NewClientset()
	ring := mustKeyring(t, configTestKey)
	add := func(ns, name string, lbl map[string]string) {
		t.Helper()
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbl}}
		if _, err := client.CoreV1().Secrets(ns).Create(t.Context(), s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	on := map[string]string{"kube-secret-sync": "true"}
	for _, name := range []string{"x", "y", "z"} {
		add("a", name, on)
	}
	add("b", "x", on)
	add("b", "unlabelled", nil)
	c, err := startSecretCache(t.Context(), client, &Config{}, labels.SelectorFromSet(on), nil, ring, ring.IDs())
	if err != nil {
		t.Fatal(err)
	}
	want := func(counts map[string]int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := map[string]int{}
			for ns := range counts {
				got[ns] = c.count(ns)
			}
			if maps.Equal(got, counts) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("counts = %v; want %v", got, counts)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	want(map[string]int{"a": 3, "b": 1, "c": 0})
	if err := client.CoreV1().Secrets("a").Delete(t.Context(), "y", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	add("c", "x", on)
	want(map[string]int{"a": 2, "b": 1, "c": 1})
}
