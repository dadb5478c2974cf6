package main

// Fuzz targets and benchmarks of the wire format.

import (
	"bytes"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzOpen: arbitrary rows must never panic and fail only with known errors.
func FuzzOpen(f *testing.F) {
	k := mustKeys(f, cryptoTestKey)
	// Deterministic, so that every fuzz worker agrees with the seed corpus.
	valid, err := k.Seal(zeroReader{}, cryptoTestBinding, cryptoTestPayload())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(cryptoTestBinding.Namespace, cryptoTestBinding.Name, cryptoTestBinding.Version, cryptoTestBinding.SourceCluster, k.ID(), valid)
	f.Add("", "", int64(0), "", k.ID(), []byte{})
	f.Add("", "", int64(0), "", k.ID(), []byte{1})
	f.Add("a", "b", int64(-1), "c", "", []byte{2, 0, 0})
	f.Add("a", "b", int64(1), "c", k.ID(), make([]byte, minCiphertextSize))
	f.Add("default", "tls", int64(42), "leader-eu", k.ID(), refSeal(f, cryptoTestKey, cryptoTestBinding, []byte(`{"data":{"k":"!!"}}`)))
	f.Fuzz(func(t *testing.T, ns, name string, version int64, cluster, keyID string, ct []byte) {
		b := Binding{Namespace: ns, Name: name, Version: version, SourceCluster: cluster}
		p, err := k.Open(b, keyID, ct)
		switch {
		case err == nil:
			if p == nil {
				t.Fatalf("Open = nil, nil")
			}
			// Only the seeded valid row can authenticate.
			if b != cryptoTestBinding || !bytes.Equal(ct, valid) {
				t.Fatalf("Open(%+v, %x) authenticated a row that was never sealed", b, ct)
			}
		case errors.Is(err, ErrWrongKey), errors.Is(err, ErrTooLarge), errors.Is(err, ErrUnsupportedFormat),
			errors.Is(err, ErrTruncated), errors.Is(err, ErrAuth):
			if p != nil {
				t.Fatalf("Open = %+v, %v; want nil payload with an error", p, err)
			}
		case strings.HasPrefix(err.Error(), "decode payload: "):
			// Only reachable with an authenticated row, i.e. the seed above.
		default:
			t.Fatalf("Open(%x) = %v; want a known error", ct, err)
		}
	})
}

// FuzzSealOpen: any payload Seal accepts comes back unchanged, with the same
// Hash; Seal refuses only what JSON cannot carry faithfully.
func FuzzSealOpen(f *testing.F) {
	k := mustKeys(f, cryptoTestKey)
	f.Add("default", "tls", int64(42), "leader", false, "kubernetes.io/tls", false, "tls.crt", []byte("pem"), "app", "web", "note", "x", int64(1700000000123456789))
	f.Add("", "", int64(-1), "", true, "", true, "", []byte{}, "", "", "", "", int64(0))
	f.Add("a\xff", "b", int64(1<<62), "c", false, "\xc3", false, "k\x00", []byte{0, 255}, "\u2028", "</script>", "a\nb", `"\`, int64(-1))
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
