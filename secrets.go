package main

// What a synced Secret is: the payload taken from a source, the copy a
// follower makes of it, the marks on that copy, and the plan that turns an
// existing copy into the desired one. All pure; the API calls are in
// writer.go.

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Marks on a follower's copy. The label says "this Secret is managed by
// kube-secret-sync" and is the only thing that allows the follower to
// overwrite or delete it; the annotations say where and when it came from.
const (
	managedLabel = "kube-secret-sync.io/managed"
	// lastUpdatedAnnotation carries the source's update time, under the
	// original KubeSecretSync's name.
	lastUpdatedAnnotation = "kube-secret-sync-last-updated"
	sourceAnnotation      = "kube-secret-sync.io/source-cluster"
	versionAnnotation     = "kube-secret-sync.io/version"
	// managedPrefix covers every label or annotation this tool owns.
	managedPrefix = "kube-secret-sync.io/"

	lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"
)

// carried reports whether a label or annotation of the source travels to
// the followers. The follower's own marks and kubectl's client-side apply
// record (which would make `kubectl apply` on the follower act on the
// leader's history) stay behind.
func carried(key string) bool {
	return !strings.HasPrefix(key, managedPrefix) && key != lastUpdatedAnnotation && key != lastAppliedAnnotation
}

// neverSynced lists the Secret types that hold credentials of the cluster
// they are in: a follower must never hold the leader's (SPEC: no cluster
// holds another's credentials), and its own token controllers would
// fight a copy.
var neverSynced = []corev1.SecretType{corev1.SecretTypeServiceAccountToken, corev1.SecretTypeBootstrapToken}

// syncable reports whether s may leave its cluster, whatever its labels.
func syncable(s *corev1.Secret) bool { return !slices.Contains(neverSynced, s.Type) }

// payloadOf extracts what is synced of a Secret: type, data, immutable and
// the carried labels and annotations. Everything cluster-local
// (ownerReferences, finalizers, managedFields, uid, resourceVersion,
// creationTimestamp) is left out by construction. The leader applies it to
// a source Secret and the follower to its copy, so equal content gives
// equal payloads (and equal hashes) on both sides.
func payloadOf(s *corev1.Secret) *Payload {
	p := &Payload{
		Type:        string(s.Type),
		Data:        s.Data,
		Immutable:   s.Immutable != nil && *s.Immutable,
		Labels:      filterKeys(s.Labels),
		Annotations: filterKeys(s.Annotations),
		UpdatedAt:   lastChange(s),
	}
	if p.Type == "" {
		p.Type = string(corev1.SecretTypeOpaque)
	}
	return p
}

func filterKeys(m map[string]string) map[string]string {
	var out map[string]string
	for k, v := range m {
		if carried(k) {
			if out == nil {
				out = make(map[string]string, len(m))
			}
			out[k] = v
		}
	}
	return out
}

// lastChange is the source's update time: the newest managedFields entry
// (every create, update and apply records one), else the creation time. A
// Secret that carries the annotation (a follower's copy, or a promoted
// follower's Secret) reports the later of the two, so that a renewal after
// a promotion still moves it forward.
func lastChange(s *corev1.Secret) time.Time {
	t := s.CreationTimestamp.Time
	for _, f := range s.ManagedFields {
		if f.Time != nil && f.Time.After(t) {
			t = f.Time.Time
		}
	}
	if v, ok := s.Annotations[lastUpdatedAnnotation]; ok {
		if a, err := time.Parse(time.RFC3339Nano, v); err == nil && a.After(t) {
			t = a
		}
	}
	return t.UTC()
}

// desiredCopy is the follower's Secret for a row: the source's synced
// content plus the management marks.
func desiredCopy(key ObjectKey, p *Payload, version int64, source string) *corev1.Secret {
	labels := maps.Clone(p.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[managedLabel] = "true"
	annotations := maps.Clone(p.Annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[lastUpdatedAnnotation] = p.UpdatedAt.UTC().Format(time.RFC3339Nano)
	annotations[sourceAnnotation] = source
	annotations[versionAnnotation] = strconv.FormatInt(version, 10)
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   key.Namespace,
			Name:        key.Name,
			Labels:      labels,
			Annotations: annotations,
		},
		Type: corev1.SecretType(p.Type),
		Data: p.Data,
	}
	if p.Immutable {
		s.Immutable = &p.Immutable
	}
	return s
}

// secretRef is what an Event about the Secret key names: the Secret by
// reference (with s's UID and resourceVersion when it exists, s may be
// nil), so that its data never goes near the Event recorder.
func secretRef(key ObjectKey, s *corev1.Secret) *corev1.ObjectReference {
	ref := &corev1.ObjectReference{APIVersion: "v1", Kind: "Secret", Namespace: key.Namespace, Name: key.Name}
	if s != nil {
		ref.UID, ref.ResourceVersion = s.UID, s.ResourceVersion
	}
	return ref
}

// dataSize is the size of a Secret's data in bytes.
func dataSize(data map[string][]byte) int {
	n := 0
	for _, v := range data {
		n += len(v)
	}
	return n
}

// isManaged reports whether this follower may change or delete s.
func isManaged(s *corev1.Secret) bool { return s.Labels[managedLabel] == "true" }

// appliedVersion is the row version a managed copy was last written from,
// or -1 when it carries none.
func appliedVersion(s *corev1.Secret) int64 {
	v, err := strconv.ParseInt(s.Annotations[versionAnnotation], 10, 64)
	if err != nil {
		return -1
	}
	return v
}

// plan is what it takes to turn an existing managed copy into the desired one.
type plan int

const (
	planNone plan = iota
	planCreate
	planUpdate
	// planRecreate: the API server refuses the change in place (type is
	// immutable, and so is an immutable Secret's data).
	planRecreate
)

func (p plan) String() string {
	return [...]string{"unchanged", "created", "updated", "recreated"}[p]
}

// planFor compares an existing copy with the desired one, field by field
// over everything the follower owns.
func planFor(existing, desired *corev1.Secret) plan {
	existingImmutable := existing.Immutable != nil && *existing.Immutable
	desiredImmutable := desired.Immutable != nil && *desired.Immutable
	existingType, desiredType := orOpaque(existing.Type), orOpaque(desired.Type)
	contentSame := existingType == desiredType && existingImmutable == desiredImmutable && dataEqual(existing.Data, desired.Data)
	metaSame := maps.Equal(existing.Labels, desired.Labels) && maps.Equal(existing.Annotations, desired.Annotations)
	switch {
	case contentSame && metaSame:
		return planNone
	case contentSame:
		return planUpdate
	case existingType != desiredType || existingImmutable:
		return planRecreate
	default:
		return planUpdate
	}
}

// orOpaque normalises the empty type, which the API server treats as Opaque.
func orOpaque(t corev1.SecretType) corev1.SecretType {
	if t == "" {
		return corev1.SecretTypeOpaque
	}
	return t
}

func dataEqual(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, va := range a {
		vb, ok := b[k]
		if !ok || string(va) != string(vb) {
			return false
		}
	}
	return true
}
