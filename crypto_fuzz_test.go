package main

// Fuzz targets and benchmarks of the wire format.

import (
	"bytes"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// openSeed is a row of FuzzOpen's seed corpus.
type openSeed struct {
	name  string
	b     Binding
	keyID string
	ct    []byte
	// sealed is what the row was sealed from with Keys.Seal, if it was:
	// Open must return it. refSealed rows were sealed by the reference
	// implementation from arbitrary plaintext: authentic, but not
	// necessarily a Payload.
	sealed    *Payload
	refSealed bool
}

// fuzzPreviousKey is the keyring's previous key in FuzzOpen: rows sealed
// under it during a key rotation must open too.
const fuzzPreviousKey = "previous-key-0123456789abcdefghi"

// fuzzOpenSeeds builds FuzzOpen's seeds: authentic rows, the same rows
// after each kind of tampering a database writer could try, and malformed
// ones. Sealing is deterministic (a zero nonce), so the committed corpus
// can be compared with them.
func fuzzOpenSeeds(tb testing.TB) []openSeed {
	tb.Helper()
	k, prev, other := mustKeys(tb, cryptoTestKey), mustKeys(tb, fuzzPreviousKey), mustKeys(tb, cryptoOtherKey)
	sealWith := func(k *Keys, b Binding, p *Payload) []byte {
		ct, err := k.Seal(zeroReader{}, b, p)
		if err != nil {
			tb.Fatal(err)
		}
		return ct
	}
	seal := func(b Binding, p *Payload) []byte { return sealWith(k, b, p) }
	b := cryptoTestBinding
	tombstoneBinding := Binding{Namespace: "prod", Name: "db-password", Version: 7, SourceCluster: "leader-us"}
	tombstone := &Payload{Deleted: true, UpdatedAt: time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)}
	valid := seal(b, cryptoTestPayload())
	underPrevious := sealWith(prev, b, cryptoTestPayload())
	underOther := sealWith(other, b, cryptoTestPayload())
	with := func(f func(*Binding)) Binding { c := b; f(&c); return c }
	flip := func(i int) []byte { c := slices.Clone(valid); c[i] ^= 1; return c }
	format := func(f byte) []byte { c := slices.Clone(valid); c[0] = f; return c }
	return []openSeed{
		{name: "valid-tls", b: b, keyID: k.ID(), ct: valid, sealed: cryptoTestPayload()},
		{name: "valid-tombstone", b: tombstoneBinding, keyID: k.ID(), ct: seal(tombstoneBinding, tombstone), sealed: tombstone},
		{name: "valid-empty", b: Binding{}, keyID: k.ID(), ct: seal(Binding{}, &Payload{}), sealed: &Payload{}},
		{name: "valid-under-previous-key", b: b, keyID: prev.ID(), ct: underPrevious, sealed: cryptoTestPayload()},
		// Authentic but not a Payload: only a key holder can write these.
		{name: "authentic-not-json", b: b, keyID: k.ID(), ct: refSeal(tb, cryptoTestKey, b, []byte("not json")), refSealed: true},
		{name: "authentic-bad-base64", b: b, keyID: k.ID(), ct: refSeal(tb, cryptoTestKey, b, []byte(`{"data":{"k":"!!"}}`)), refSealed: true},
		{name: "authentic-json-null", b: b, keyID: k.ID(), ct: refSeal(tb, cryptoTestKey, b, []byte("null")), refSealed: true},
		// A database writer's attempts on the valid row.
		{name: "moved-to-another-name", b: with(func(b *Binding) { b.Name = "tls2" }), keyID: k.ID(), ct: valid},
		{name: "moved-to-another-namespace", b: with(func(b *Binding) { b.Namespace = "kube-system" }), keyID: k.ID(), ct: valid},
		{name: "replayed-under-newer-version", b: with(func(b *Binding) { b.Version++ }), keyID: k.ID(), ct: valid},
		{name: "rolled-back-version", b: with(func(b *Binding) { b.Version-- }), keyID: k.ID(), ct: valid},
		{name: "other-source-cluster", b: with(func(b *Binding) { b.SourceCluster = "leader-us" }), keyID: k.ID(), ct: valid},
		{name: "tampered-nonce", b: b, keyID: k.ID(), ct: flip(1)},
		{name: "tampered-body", b: b, keyID: k.ID(), ct: flip(1 + nonceSize)},
		{name: "tampered-tag", b: b, keyID: k.ID(), ct: flip(len(valid) - 1)},
		{name: "truncated-tag", b: b, keyID: k.ID(), ct: valid[:len(valid)-1]},
		{name: "tombstone-moved-onto-valid-row", b: b, keyID: k.ID(), ct: seal(tombstoneBinding, tombstone)},
		// Keys: a row is opened only with the key its key id names.
		{name: "unknown-key-id", b: b, keyID: other.ID(), ct: underOther},
		{name: "unknown-key-under-our-id", b: b, keyID: k.ID(), ct: underOther},
		{name: "previous-key-under-current-id", b: b, keyID: k.ID(), ct: underPrevious},
		{name: "current-key-under-previous-id", b: b, keyID: prev.ID(), ct: valid},
		{name: "long-key-id", b: b, keyID: strings.Repeat("f", 100) + "\n\x1b[31m", ct: valid},
		{name: "empty-key-id", b: b, keyID: "", ct: valid},
		// Malformed.
		{name: "empty", b: b, keyID: k.ID(), ct: []byte{}},
		{name: "format-only", b: b, keyID: k.ID(), ct: []byte{formatV1}},
		{name: "one-short-of-minimum", b: b, keyID: k.ID(), ct: valid[:minCiphertextSize-1]},
		{name: "minimum-zeros", b: b, keyID: k.ID(), ct: append([]byte{formatV1}, make([]byte, minCiphertextSize-1)...)},
		{name: "format-0", b: b, keyID: k.ID(), ct: format(0)},
		{name: "format-2", b: b, keyID: k.ID(), ct: format(2)},
		{name: "format-json", b: b, keyID: k.ID(), ct: []byte(`{"type":"Opaque","data":{}}`)},
		{name: "negative-version", b: with(func(b *Binding) { b.Version = -1 }), keyID: k.ID(), ct: valid},
	}
}

func openSeedArgs(seeds []openSeed) []fuzzSeed {
	out := make([]fuzzSeed, len(seeds))
	for i, s := range seeds {
		out[i] = fuzzSeed{s.name, []any{s.b.Namespace, s.b.Name, s.b.Version, s.b.SourceCluster, s.keyID, s.ct}}
	}
	return out
}

// FuzzOpen feeds arbitrary rows to the follower's Keyring.Open, as a
// database writer could: it must never panic, only rows sealed with a key
// of the ring may open (and they open to what was sealed), and every
// failure is one of the documented errors, on one short line (it is logged
// and put in an Event) without key material.
func FuzzOpen(f *testing.F) {
	k, err := NewKeyring(cryptoTestKey, fuzzPreviousKey)
	if err != nil {
		f.Fatal(err)
	}
	seeds := fuzzOpenSeeds(f)
	// The seeds committed under testdata/fuzz/FuzzOpen are the corpus.
	f.Fuzz(func(t *testing.T, ns, name string, version int64, cluster, keyID string, ct []byte) {
		b := Binding{Namespace: ns, Name: name, Version: version, SourceCluster: cluster}
		var authentic *openSeed
		for i, s := range seeds {
			if (s.sealed != nil || s.refSealed) && s.b == b && s.keyID == keyID && bytes.Equal(s.ct, ct) {
				authentic = &seeds[i]
			}
		}
		p, err := k.Open(b, keyID, ct)
		if err == nil {
			if p == nil {
				t.Fatalf("Open = nil, nil")
			}
			if authentic == nil {
				t.Fatalf("Open(%+v, %q, %x) authenticated a row that was never sealed", b, keyID, ct)
			}
			if authentic.sealed != nil {
				if d := diffPayload(p, authentic.sealed); d != "" {
					t.Fatalf("Open(seed %s) differs from what was sealed: %s", authentic.name, d)
				}
			}
			return
		}
		if p != nil {
			t.Fatalf("Open = %+v, %v; want a nil payload with an error", p, err)
		}
		if authentic != nil && authentic.sealed != nil {
			t.Fatalf("Open(seed %s) = %v; want the sealed payload", authentic.name, err)
		}
		switch {
		case errors.Is(err, ErrWrongKey), errors.Is(err, ErrTooLarge), errors.Is(err, ErrUnsupportedFormat),
			errors.Is(err, ErrTruncated), errors.Is(err, ErrAuth):
		case strings.HasPrefix(err.Error(), "decode payload: "):
			// Decoding happens only after authentication.
			if authentic == nil {
				t.Fatalf("Open(%+v, %q, %x) = %v: decoded a row that was never sealed", b, keyID, ct, err)
			}
		default:
			t.Fatalf("Open(%x) = %v; want a known error", ct, err)
		}
		// The row's content reaches the message only as a capped,
		// quoted key id, never as key material.
		msg := err.Error()
		if hasControl(msg) || len(msg) > 256 {
			t.Fatalf("Open error %q: want one line of at most 256 bytes without control characters", msg)
		}
		for _, key := range []string{cryptoTestKey, fuzzPreviousKey} {
			for _, half := range []string{key[:16], key[16:]} {
				if strings.Contains(msg, half) && !strings.Contains(keyID, half) {
					t.Fatalf("Open error %q contains key material", msg)
				}
			}
		}
	})
}

// fuzzSealOpenSeeds are payloads in the shapes the leader meets: a
// cert-manager TLS Secret, a tombstone, empty values, and strings that JSON
// escapes or cannot carry.
func fuzzSealOpenSeeds() []fuzzSeed {
	seed := func(name string, args ...any) fuzzSeed { return fuzzSeed{name, args} }
	return []fuzzSeed{
		seed("tls", "default", "tls", int64(42), "leader", false, "kubernetes.io/tls", false, "tls.crt", []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
			"kube-secret-sync", "true", "cert-manager.io/common-name", "example.com", int64(1700000000123456789)),
		seed("tombstone", "prod", "db", int64(7), "leader-us", true, "", false, "", []byte{}, "", "", "", "", int64(0)),
		seed("empty", "", "", int64(-1), "", true, "", true, "", []byte{}, "", "", "", "", int64(0)),
		seed("immutable-binary", "ns", "bin", int64(1<<62), "c", false, "Opaque", true, "key", []byte{0, 255, 128, 127}, "a", "", "b", "", int64(-1)),
		seed("invalid-utf8", "a\xff", "b", int64(1), "c", false, "\xc3", false, "k\x00", []byte{0, 255}, "\u2028", "</script>", "a\nb", `"\`, int64(-1)),
		seed("invalid-utf8-label", "ns", "n", int64(1), "c", false, "Opaque", false, "k", []byte("v"), "app", "\xff", "", "", int64(0)),
		seed("json-escapes", "ns", "n", int64(1), "c", false, "Opaque", false, "<&>", []byte(`{"x":1}`), "\u2028\u2029", "\\", "\"", "\t", int64(1<<62)),
	}
}

// FuzzSealOpen: any payload Seal accepts comes back unchanged, with the same
// Hash; Seal refuses only what JSON cannot carry faithfully.
func FuzzSealOpen(f *testing.F) {
	k := mustKeys(f, cryptoTestKey)
	// The seeds committed under testdata/fuzz/FuzzSealOpen are the corpus.
	f.Fuzz(func(t *testing.T, ns, name string, version int64, cluster string, deleted bool, typ string, immutable bool,
		dataKey string, dataVal []byte, labelKey, labelVal, annKey, annVal string, nanos int64) {
		b := Binding{Namespace: ns, Name: name, Version: version, SourceCluster: cluster}
		p := &Payload{
			Deleted:     deleted,
			Type:        typ,
			Data:        map[string][]byte{dataKey: dataVal},
			Immutable:   immutable,
			Labels:      map[string]string{labelKey: labelVal},
			Annotations: map[string]string{annKey: annVal},
			UpdatedAt:   time.Unix(0, nanos).UTC(),
		}
		ct, err := k.Seal(crand.Reader, b, p)
		if err != nil {
			if !errors.Is(err, ErrInvalidPayload) {
				t.Fatalf("Seal = %v; want nil or %v", err, ErrInvalidPayload)
			}
			if allValidUTF8(typ, dataKey, labelKey, labelVal, annKey, annVal) {
				t.Fatalf("Seal refused valid UTF-8: %v", err)
			}
			return
		}
		got, err := k.Open(b, k.ID(), ct)
		if err != nil {
			t.Fatalf("Open(Seal(p)) = %v", err)
		}
		if d := diffPayload(got, p); d != "" {
			t.Fatalf("Open(Seal(p)) differs: %s", d)
		}
		if !bytes.Equal(k.Hash(ns, name, got), k.Hash(ns, name, p)) {
			t.Fatalf("Hash(Open(Seal(p))) != Hash(p)")
		}
	})
}

func allValidUTF8(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}

// tlsPayload is a cert-manager-style TLS Secret of 4 KiB of data.
func tlsPayload() *Payload {
	rng := mrand.New(mrand.NewPCG(1, 2))
	pem := func(kind string, n int) []byte {
		raw := make([]byte, n)
		for i := range raw {
			raw[i] = byte(rng.Uint32())
		}
		b64 := base64.StdEncoding.EncodeToString(raw)
		var sb strings.Builder
		sb.WriteString("-----BEGIN " + kind + "-----\n")
		for len(b64) > 64 {
			sb.WriteString(b64[:64] + "\n")
			b64 = b64[64:]
		}
		sb.WriteString(b64 + "\n-----END " + kind + "-----\n")
		return []byte(sb.String())
	}
	return &Payload{
		Type: "kubernetes.io/tls",
		Data: map[string][]byte{
			"tls.crt": pem("CERTIFICATE", 1850),
			"tls.key": pem("PRIVATE KEY", 1140),
		},
		Labels: map[string]string{
			"kube-secret-sync":               "true",
			"controller.cert-manager.io/fao": "true",
		},
		Annotations: map[string]string{
			"cert-manager.io/alt-names":        "example.com,www.example.com",
			"cert-manager.io/certificate-name": "example-com",
			"cert-manager.io/common-name":      "example.com",
			"cert-manager.io/ip-sans":          "",
			"cert-manager.io/issuer-group":     "cert-manager.io",
			"cert-manager.io/issuer-kind":      "ClusterIssuer",
			"cert-manager.io/issuer-name":      "letsencrypt-prod",
			"cert-manager.io/uri-sans":         "",
		},
		UpdatedAt: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC),
	}
}

func payloadDataSize(p *Payload) int64 {
	var n int
	for _, v := range p.Data {
		n += len(v)
	}
	return int64(n)
}

func BenchmarkSeal(b *testing.B) {
	k := mustKeys(b, cryptoTestKey)
	p := tlsPayload()
	b.ReportAllocs()
	b.SetBytes(payloadDataSize(p))
	for b.Loop() {
		if _, err := k.Seal(crand.Reader, cryptoTestBinding, p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	k := mustKeys(b, cryptoTestKey)
	p := tlsPayload()
	ct := mustSeal(b, k, cryptoTestBinding, p)
	b.ReportAllocs()
	b.SetBytes(payloadDataSize(p))
	for b.Loop() {
		if _, err := k.Open(cryptoTestBinding, k.ID(), ct); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHash(b *testing.B) {
	k := mustKeys(b, cryptoTestKey)
	p := tlsPayload()
	b.ReportAllocs()
	b.SetBytes(payloadDataSize(p))
	for b.Loop() {
		k.Hash("default", "tls", p)
	}
}
