package main

import (
	"bytes"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	corev1 "k8s.io/api/core/v1"
)

// TestTrimForCacheKeepsLastChange: the cache keeps only the newest
// managedFields time, which is all lastChange needs.
func TestTrimForCacheKeepsLastChange(t *testing.T) {
	at := func(sec int64) *metav1.Time { tm := metav1.Unix(sec, 0); return &tm }
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
		CreationTimestamp: *at(100),
		ManagedFields: []metav1.ManagedFieldsEntry{
			{Manager: "kubectl", Time: at(200), FieldsV1: metav1.NewFieldsV1(`{"f:data":{}}`)},
			{Manager: "cert-manager", Time: at(300), FieldsV1: metav1.NewFieldsV1(`{"f:data":{}}`)},
			{Manager: "other"},
		},
	}}
	want := lastChange(s)
	got, err := trimForCache(s.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	trimmed := got.(*corev1.Secret)
	if len(trimmed.ManagedFields) != 1 || trimmed.ManagedFields[0].FieldsV1 != nil {
		t.Errorf("trimmed managedFields = %+v; want one entry without fields", trimmed.ManagedFields)
	}
	if lastChange(trimmed) != want || !want.Equal(at(300).Time) {
		t.Errorf("lastChange after trim = %v; want %v (= 300)", lastChange(trimmed), want)
	}
	if _, err := trimForCache(&corev1.Secret{}); err != nil {
		t.Error(err)
	}
}

// TestStripData: a Secret over cacheDataLimit is cached without its data,
// and the hashes kept instead are those of its full payload.
func TestStripData(t *testing.T) {
	ring := mustKeyring(t, configTestKey, strings.Repeat("o", 32))
	small := sourceSecret()
	big := sourceSecret()
	big.Data["blob"] = bytes.Repeat([]byte{1}, cacheDataLimit+1)
	want := map[string][]byte{}
	for _, id := range ring.IDs() {
		want[id], _ = ring.HashFor(id, big.Namespace, big.Name, payloadOf(big))
	}
	size := cachedDataSize(big)

	stripData(small, ring, ring.IDs())
	if isStripped(small) || small.Data == nil {
		t.Error("a small Secret was stripped")
	}
	stripData(big, ring, ring.IDs())
	if !isStripped(big) || big.Data != nil {
		t.Fatal("a large Secret kept its data")
	}
	if got := cachedDataSize(big); got != size {
		t.Errorf("cachedDataSize = %d; want %d", got, size)
	}
	for id, h := range want {
		if got, ok := cachedHash(big, ring, id); !ok || !bytes.Equal(got, h) {
			t.Errorf("cachedHash(%s) = %x, %v; want the full payload's hash", id, got, ok)
		}
	}
	if _, ok := cachedHash(big, ring, "0000000000000000"); ok {
		t.Error("cachedHash of a key id not kept: ok")
	}
	// The cache's marks never reach a payload.
	for k := range payloadOf(big).Annotations {
		if strings.HasPrefix(k, managedPrefix) {
			t.Errorf("payload carries the cache's annotation %s", k)
		}
	}
}
