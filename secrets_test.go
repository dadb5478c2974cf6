package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// These tests are pure: no cluster, no fake clientset. What the follower
// writes is decided by payloadOf, desiredCopy and planFor; the client-go
// calls around them are exercised against real API servers in
// sync_e2e_test.go, and their branches against the fake clientset in
// writer_test.go.

// sourceSecret is a cert-manager TLS Secret as a leader's API server returns
// it: full of cluster-local metadata that must never travel.
func sourceSecret() *corev1.Secret {
	created := metav1.NewTime(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	applied := metav1.NewTime(time.Date(2025, 5, 6, 7, 8, 9, 0, time.UTC))
	updated := metav1.NewTime(time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC))
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:         "web",
			Name:              "example-com-tls",
			UID:               types.UID("6f1f8d2e-leader-uid"),
			ResourceVersion:   "987654",
			Generation:        3,
			CreationTimestamp: created,
			Labels: map[string]string{
				"kube-secret-sync":               "true",
				"controller.cert-manager.io/fao": "true",
				managedLabel:                     "true", // never carried: the follower's own mark
			},
			Annotations: map[string]string{
				"cert-manager.io/common-name":   "example.com",
				lastAppliedAnnotation:           `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"leader-history"}}`,
				sourceAnnotation:                "somewhere-else",
				versionAnnotation:               "77",
				managedPrefix + "anything-else": "x",
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "cert-manager.io/v1", Kind: "Certificate", Name: "example-com-owner", UID: "owner-uid-123",
			}},
			Finalizers: []string{"example.com/leader-finalizer"},
			ManagedFields: []metav1.ManagedFieldsEntry{
				{Manager: "cert-manager-certificates-issuing", Operation: metav1.ManagedFieldsOperationApply, Time: &applied},
				{Manager: "kubectl-label", Operation: metav1.ManagedFieldsOperationUpdate, Time: &updated},
				{Manager: "no-time", Operation: metav1.ManagedFieldsOperationUpdate},
			},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{
			"tls.crt": []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
			"tls.key": {0x00, 0xff, 0x80},
		},
	}
}

func TestCarried(t *testing.T) {
	tests := []struct {
		key  string
		want bool
	}{
		{"kube-secret-sync", true}, // the opt-in label travels: the copy looks like its source
		{"app.kubernetes.io/name", true},
		{"cert-manager.io/common-name", true},
		{"kube-secret-sync.io.example.com/x", true}, // only the exact prefix is ours
		{"kubectl.kubernetes.io/restartedAt", true},
		{managedLabel, false},
		{sourceAnnotation, false},
		{versionAnnotation, false},
		{managedPrefix + "created-namespace", false},
		{lastUpdatedAnnotation, false},
		{lastAppliedAnnotation, false},
	}
	for _, tt := range tests {
		if got := carried(tt.key); got != tt.want {
			t.Errorf("carried(%q) = %v; want %v", tt.key, got, tt.want)
		}
	}
}

func TestPayloadOf(t *testing.T) {
	src := sourceSecret()
	before := src.DeepCopy()
	p := payloadOf(src)

	want := &Payload{
		Type: string(corev1.SecretTypeTLS),
		Data: src.Data,
		Labels: map[string]string{
			"kube-secret-sync":               "true",
			"controller.cert-manager.io/fao": "true",
		},
		Annotations: map[string]string{"cert-manager.io/common-name": "example.com"},
		// The newest managedFields entry, not the creation time.
		UpdatedAt: time.Date(2025, 5, 6, 7, 8, 9, 0, time.UTC),
	}
	if d := diffPayload(p, want); d != "" {
		t.Errorf("payloadOf(source): %s", d)
	}
	if !equalSecrets(src, before) {
		t.Errorf("payloadOf modified its argument")
	}

	// Cluster-local fields cannot reach the followers: they are not in the
	// sealed plaintext at all.
	plaintext, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, local := range []string{
		string(src.UID), src.ResourceVersion, "example-com-owner", "owner-uid-123",
		"example.com/leader-finalizer", "cert-manager-certificates-issuing", "leader-history",
		"somewhere-else", managedPrefix,
	} {
		if bytes.Contains(plaintext, []byte(local)) {
			t.Errorf("payloadOf(source) carries cluster-local %q: %s", local, plaintext)
		}
	}
}

func TestPayloadOfUpdatedAt(t *testing.T) {
	created := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	newest := time.Date(2025, 5, 6, 7, 8, 9, 0, time.UTC)
	older := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	annotated := time.Date(2024, 12, 31, 23, 59, 59, 123456789, time.UTC)
	mf := func(ts ...time.Time) []metav1.ManagedFieldsEntry {
		var out []metav1.ManagedFieldsEntry
		for _, t := range ts {
			mt := metav1.NewTime(t)
			out = append(out, metav1.ManagedFieldsEntry{Manager: "m", Time: &mt})
		}
		return append(out, metav1.ManagedFieldsEntry{Manager: "untimed"})
	}
	cest := time.FixedZone("CEST", 2*3600)
	tests := []struct {
		name        string
		created     time.Time
		managed     []metav1.ManagedFieldsEntry
		annotations map[string]string
		want        time.Time
	}{
		{"creation time without managedFields", created, nil, nil, created},
		{"newest managedFields entry", created, mf(older, newest), nil, newest},
		{"newest managedFields entry in any order", created, mf(newest, older), nil, newest},
		{"managedFields older than creation", created, mf(created.Add(-time.Hour)), nil, created},
		{"annotation older than managedFields", created, mf(newest), map[string]string{lastUpdatedAnnotation: annotated.Format(time.RFC3339Nano)}, newest},
		{"annotation newer than managedFields", created, mf(older), map[string]string{lastUpdatedAnnotation: newest.Add(time.Hour).Format(time.RFC3339Nano)}, newest.Add(time.Hour)},
		{"unparsable annotation falls back", created, mf(newest), map[string]string{lastUpdatedAnnotation: "yesterday"}, newest},
		{"non-UTC creation time", created.In(cest), nil, nil, created},
		{"non-UTC managedFields time", created, mf(newest.In(cest)), nil, newest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
				Namespace: "ns", Name: "s", Annotations: tt.annotations,
				CreationTimestamp: metav1.NewTime(tt.created), ManagedFields: tt.managed,
			}}
			got := payloadOf(s).UpdatedAt
			if !got.Equal(tt.want) || got.Location() != time.UTC {
				t.Errorf("payloadOf(%s).UpdatedAt = %v; want %v in UTC", tt.name, got, tt.want.UTC())
			}
		})
	}
}

func TestPayloadOfDefaults(t *testing.T) {
	no, yes := false, true
	tests := []struct {
		name          string
		typ           corev1.SecretType
		immutable     *bool
		wantType      string
		wantImmutable bool
	}{
		{"empty type is Opaque", "", nil, "Opaque", false},
		{"Opaque stays", corev1.SecretTypeOpaque, nil, "Opaque", false},
		{"TLS stays", corev1.SecretTypeTLS, nil, "kubernetes.io/tls", false},
		{"custom type stays", "example.com/custom", nil, "example.com/custom", false},
		{"immutable false", "", &no, "Opaque", false},
		{"immutable true", "", &yes, "Opaque", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := payloadOf(&corev1.Secret{Type: tt.typ, Immutable: tt.immutable})
			if p.Type != tt.wantType || p.Immutable != tt.wantImmutable {
				t.Errorf("payloadOf(type %q, immutable %v) = type %q, immutable %v; want %q, %v",
					tt.typ, tt.immutable, p.Type, p.Immutable, tt.wantType, tt.wantImmutable)
			}
			if p.Labels != nil || p.Annotations != nil || p.Deleted {
				t.Errorf("payloadOf(bare Secret) = %+v; want no labels, annotations or tombstone", p)
			}
		})
	}
}

func TestDesiredCopy(t *testing.T) {
	key := ObjectKey{"web", "example-com-tls"}
	p := tlsPayload()
	p.UpdatedAt = time.Date(2025, 6, 1, 14, 0, 0, 5, time.FixedZone("CEST", 2*3600))
	p.Immutable = true
	labelsBefore, annotationsBefore := maps.Clone(p.Labels), maps.Clone(p.Annotations)

	got := desiredCopy(key, p, 42, "leader-eu")

	if got.Namespace != key.Namespace || got.Name != key.Name {
		t.Errorf("desiredCopy(%s) names %s/%s", key, got.Namespace, got.Name)
	}
	if got.Type != corev1.SecretType(p.Type) {
		t.Errorf("desiredCopy(%s).Type = %q; want %q", key, got.Type, p.Type)
	}
	if !dataEqual(got.Data, p.Data) {
		t.Errorf("desiredCopy(%s).Data differs from the payload's", key)
	}
	if got.Immutable == nil || !*got.Immutable {
		t.Errorf("desiredCopy(%s).Immutable = %v; want true", key, got.Immutable)
	}
	wantLabels := maps.Clone(p.Labels)
	wantLabels[managedLabel] = "true"
	if !maps.Equal(got.Labels, wantLabels) {
		t.Errorf("desiredCopy(%s).Labels = %v; want %v", key, got.Labels, wantLabels)
	}
	wantAnnotations := maps.Clone(p.Annotations)
	wantAnnotations[lastUpdatedAnnotation] = "2025-06-01T12:00:00.000000005Z"
	wantAnnotations[sourceAnnotation] = "leader-eu"
	wantAnnotations[versionAnnotation] = "42"
	if !maps.Equal(got.Annotations, wantAnnotations) {
		t.Errorf("desiredCopy(%s).Annotations = %v; want %v", key, got.Annotations, wantAnnotations)
	}
	if !isManaged(got) {
		t.Errorf("isManaged(desiredCopy(%s)) = false; want true", key)
	}
	// Nothing cluster-local: the API server of the follower fills these in.
	if got.UID != "" || got.ResourceVersion != "" || !got.CreationTimestamp.IsZero() ||
		got.OwnerReferences != nil || got.Finalizers != nil || got.ManagedFields != nil ||
		got.GenerateName != "" || got.StringData != nil {
		t.Errorf("desiredCopy(%s) has cluster-local fields: %+v", key, got.ObjectMeta)
	}
	if !maps.Equal(p.Labels, labelsBefore) || !maps.Equal(p.Annotations, annotationsBefore) {
		t.Errorf("desiredCopy(%s) modified the payload's labels or annotations", key)
	}

	// A mutable payload gives no immutable field at all, and nil maps
	// still get the marks.
	bare := desiredCopy(key, &Payload{Type: "Opaque"}, 1, "c")
	if bare.Immutable != nil {
		t.Errorf("desiredCopy(mutable).Immutable = %v; want nil", *bare.Immutable)
	}
	if bare.Labels[managedLabel] != "true" || bare.Annotations[versionAnnotation] != "1" {
		t.Errorf("desiredCopy(bare payload) lacks the marks: %v %v", bare.Labels, bare.Annotations)
	}
}

// TestDesiredCopyRoundTrip checks the symmetry the follower relies on to skip
// unchanged copies: the payload read back from the copy it wrote hashes like
// the row it wrote it from.
func TestDesiredCopyRoundTrip(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	immutable := func() *Payload {
		p := tlsPayload()
		p.Immutable = true
		return p
	}
	tests := []struct {
		name string
		p    *Payload
	}{
		{"tls", tlsPayload()},
		{"from a source Secret", payloadOf(sourceSecret())},
		{"bare Opaque", payloadOf(&corev1.Secret{})},
		{"immutable", immutable()},
		{"empty maps", &Payload{Type: "Opaque", Data: map[string][]byte{}, Labels: map[string]string{}, Annotations: map[string]string{}}},
		{"empty value", &Payload{Type: "Opaque", Data: map[string][]byte{"empty": {}}}},
		{"sub-second non-UTC time", &Payload{Type: "Opaque", UpdatedAt: time.Date(2025, 1, 1, 1, 1, 1, 999999999, time.FixedZone("X", -7*3600))}},
		{"zero time", &Payload{Type: "Opaque"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := ObjectKey{"ns", "name"}
			back := payloadOf(desiredCopy(key, tt.p, 9, "leader"))
			if got, want := k.Hash(key.Namespace, key.Name, back), k.Hash(key.Namespace, key.Name, tt.p); !bytes.Equal(got, want) {
				t.Errorf("Hash(payloadOf(desiredCopy(%s))) = %x; want %x (diff: %s)", tt.name, got, want, diffPayload(back, tt.p))
			}
			if !back.UpdatedAt.Equal(tt.p.UpdatedAt) {
				t.Errorf("payloadOf(desiredCopy(%s)).UpdatedAt = %v; want %v", tt.name, back.UpdatedAt, tt.p.UpdatedAt)
			}
		})
	}
}

func TestPlanFor(t *testing.T) {
	yes := true
	// existing is a managed copy as the follower's API server returns it.
	existing := func(change func(*corev1.Secret)) *corev1.Secret {
		s := desiredCopy(ObjectKey{"ns", "s"}, tlsPayload(), 5, "leader")
		s.UID, s.ResourceVersion = "follower-uid", "12"
		s.CreationTimestamp = metav1.Now()
		if change != nil {
			change(s)
		}
		return s
	}
	desired := func(change func(*Payload)) *corev1.Secret {
		p := tlsPayload()
		if change != nil {
			change(p)
		}
		return desiredCopy(ObjectKey{"ns", "s"}, p, 5, "leader")
	}
	tests := []struct {
		name     string
		existing *corev1.Secret
		desired  *corev1.Secret
		want     plan
	}{
		{"same", existing(nil), desired(nil), planNone},
		{"label added", existing(nil), desired(func(p *Payload) { p.Labels["team"] = "web" }), planUpdate},
		{"annotation changed", existing(nil), desired(func(p *Payload) { p.Annotations["cert-manager.io/common-name"] = "example.org" }), planUpdate},
		{"annotation removed", existing(nil), desired(func(p *Payload) { delete(p.Annotations, "cert-manager.io/uri-sans") }), planUpdate},
		{"newer version only", existing(nil), desiredCopy(ObjectKey{"ns", "s"}, tlsPayload(), 6, "leader"), planUpdate},
		{"hand-edited label on the copy", existing(func(s *corev1.Secret) { s.Labels["edited"] = "by-hand" }), desired(nil), planUpdate},
		{"data value changed", existing(nil), desired(func(p *Payload) { p.Data["tls.key"] = []byte("renewed") }), planUpdate},
		{"data key added", existing(nil), desired(func(p *Payload) { p.Data["ca.crt"] = []byte("ca") }), planUpdate},
		{"data key removed", existing(nil), desired(func(p *Payload) { delete(p.Data, "tls.crt") }), planUpdate},
		{"data key renamed", existing(nil), desired(func(p *Payload) { p.Data["tls.crt2"] = p.Data["tls.crt"]; delete(p.Data, "tls.crt") }), planUpdate},
		{"type changed", existing(nil), desired(func(p *Payload) { p.Type = "Opaque" }), planRecreate},
		{"type changed, data same, metadata same", existing(func(s *corev1.Secret) { s.Type = "example.com/other" }), desired(nil), planRecreate},
		{"immutable existing, data changed", existing(func(s *corev1.Secret) { s.Immutable = &yes }),
			desired(func(p *Payload) { p.Immutable = true; p.Data["tls.key"] = []byte("renewed") }), planRecreate},
		{"immutable existing, metadata changed", existing(func(s *corev1.Secret) { s.Immutable = &yes }),
			desired(func(p *Payload) { p.Immutable = true; p.Labels["team"] = "web" }), planUpdate},
		{"immutable existing, unchanged", existing(func(s *corev1.Secret) { s.Immutable = &yes }),
			desired(func(p *Payload) { p.Immutable = true }), planNone},
		{"immutable to mutable", existing(func(s *corev1.Secret) { s.Immutable = &yes }), desired(nil), planRecreate},
		{"mutable to immutable", existing(nil), desired(func(p *Payload) { p.Immutable = true }), planUpdate},
		{"mutable to immutable with new data", existing(nil), desired(func(p *Payload) { p.Immutable = true; p.Data["x"] = []byte("y") }), planUpdate},
		{"existing type empty equals Opaque",
			existing(func(s *corev1.Secret) { s.Type = "" }), desired(func(p *Payload) { p.Type = "Opaque" }), planNone},
		{"immutable false pointer equals nil", existing(func(s *corev1.Secret) { no := false; s.Immutable = &no }), desired(nil), planNone},
		{"nil and empty data equal", existing(func(s *corev1.Secret) { s.Data = map[string][]byte{} }), desired(func(p *Payload) { p.Data = nil }), planNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := planFor(tt.existing, tt.desired); got != tt.want {
				t.Errorf("planFor(%s) = %v; want %v", tt.name, got, tt.want)
			}
		})
	}
}

func TestPlanString(t *testing.T) {
	for p, want := range map[plan]string{planNone: "unchanged", planCreate: "created", planUpdate: "updated", planRecreate: "recreated"} {
		if got := p.String(); got != want {
			t.Errorf("plan(%d).String() = %q; want %q", int(p), got, want)
		}
	}
}

func TestAppliedVersion(t *testing.T) {
	tests := []struct {
		annotations map[string]string
		want        int64
	}{
		{nil, -1},
		{map[string]string{}, -1},
		{map[string]string{versionAnnotation: ""}, -1},
		{map[string]string{versionAnnotation: "abc"}, -1},
		{map[string]string{versionAnnotation: "12x"}, -1},
		{map[string]string{versionAnnotation: "0"}, 0},
		{map[string]string{versionAnnotation: "42"}, 42},
		{map[string]string{versionAnnotation: "9223372036854775807"}, 9223372036854775807},
		{map[string]string{versionAnnotation: "9223372036854775808"}, -1},
		{map[string]string{"kube-secret-sync/version": "42"}, -1},
	}
	for _, tt := range tests {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Annotations: tt.annotations}}
		if got := appliedVersion(s); got != tt.want {
			t.Errorf("appliedVersion(%v) = %d; want %d", tt.annotations, got, tt.want)
		}
	}
	// desiredCopy and appliedVersion agree.
	for _, v := range []int64{0, 1, 1 << 40} {
		if got := appliedVersion(desiredCopy(ObjectKey{"ns", "s"}, &Payload{}, v, "c")); got != v {
			t.Errorf("appliedVersion(desiredCopy(version %d)) = %d; want %d", v, got, v)
		}
	}
}

func TestIsManaged(t *testing.T) {
	tests := []struct {
		labels map[string]string
		want   bool
	}{
		{nil, false},
		{map[string]string{"kube-secret-sync": "true"}, false}, // the source's opt-in, not our mark
		{map[string]string{managedLabel: "false"}, false},
		{map[string]string{managedLabel: "True"}, false},
		{map[string]string{managedLabel: "true"}, true},
	}
	for _, tt := range tests {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Labels: tt.labels}}
		if got := isManaged(s); got != tt.want {
			t.Errorf("isManaged(labels %v) = %v; want %v", tt.labels, got, tt.want)
		}
	}
}

// equalSecrets compares two Secrets through their JSON form.
func equalSecrets(a, b *corev1.Secret) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// Guard against an accidental change of the marks' names: followers in the
// field recognise their copies by them.
func TestMarkNames(t *testing.T) {
	for got, want := range map[string]string{
		managedLabel:          "kube-secret-sync.io/managed",
		lastUpdatedAnnotation: "kube-secret-sync-last-updated",
		sourceAnnotation:      "kube-secret-sync.io/source-cluster",
		versionAnnotation:     "kube-secret-sync.io/version",
	} {
		if got != want {
			t.Errorf("mark %q; want %q", got, want)
		}
		if strings.HasPrefix(want, managedPrefix) && carried(want) {
			t.Errorf("carried(%q) = true; want false", want)
		}
	}
}

func TestSyncable(t *testing.T) {
	tests := []struct {
		typ  corev1.SecretType
		want bool
	}{
		{"", true},
		{corev1.SecretTypeOpaque, true},
		{corev1.SecretTypeTLS, true},
		{corev1.SecretTypeDockerConfigJson, true},
		{"example.com/custom", true},
		{corev1.SecretTypeServiceAccountToken, false},
		{corev1.SecretTypeBootstrapToken, false},
	}
	for _, tt := range tests {
		if got := syncable(&corev1.Secret{Type: tt.typ}); got != tt.want {
			t.Errorf("syncable(type %q) = %v; want %v", tt.typ, got, tt.want)
		}
	}
}
