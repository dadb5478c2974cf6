package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"runtime/debug"
	"testing"
	"time"
)

func TestHash(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	base := func() *Payload {
		return &Payload{
			Type:        "kubernetes.io/tls",
			Data:        map[string][]byte{"tls.crt": []byte("crt"), "tls.key": []byte("key"), "ab": []byte("c")},
			Labels:      map[string]string{"app": "web", "tier": "front"},
			Annotations: map[string]string{"note": "x"},
			UpdatedAt:   time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		}
	}
	want := k.Hash("ns", "n", base())
	if len(want) != sha256.Size {
		t.Fatalf("len(Hash) = %d; want %d", len(want), sha256.Size)
	}

	t.Run("same", func(t *testing.T) {
		tests := []struct {
			name string
			edit func(*Payload)
		}{
			{"unchanged", func(*Payload) {}},
			{"UpdatedAt", func(p *Payload) { p.UpdatedAt = time.Now() }},
			{"insertion order", func(p *Payload) {
				p.Data = map[string][]byte{}
				p.Data["tls.key"], p.Data["ab"], p.Data["tls.crt"] = []byte("key"), []byte("c"), []byte("crt")
				p.Labels = map[string]string{}
				p.Labels["tier"], p.Labels["app"] = "front", "web"
			}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				p := base()
				tt.edit(p)
				if got := k.Hash("ns", "n", p); !bytes.Equal(got, want) {
					t.Errorf("Hash after %s = %x; want %x", tt.name, got, want)
				}
			})
		}
		t.Run("nil and empty maps", func(t *testing.T) {
			a := &Payload{Type: "Opaque"}
			b := &Payload{Type: "Opaque", Data: map[string][]byte{}, Labels: map[string]string{}, Annotations: map[string]string{}}
			if ha, hb := k.Hash("ns", "n", a), k.Hash("ns", "n", b); !bytes.Equal(ha, hb) {
				t.Errorf("Hash(nil maps) = %x, Hash(empty maps) = %x; want equal", ha, hb)
			}
			c := &Payload{Data: map[string][]byte{"k": nil}}
			d := &Payload{Data: map[string][]byte{"k": {}}}
			if hc, hd := k.Hash("ns", "n", c), k.Hash("ns", "n", d); !bytes.Equal(hc, hd) {
				t.Errorf("Hash(nil value) = %x, Hash(empty value) = %x; want equal", hc, hd)
			}
			if hn, he := k.Hash("ns", "n", nil), k.Hash("ns", "n", &Payload{}); !bytes.Equal(hn, he) {
				t.Errorf("Hash(nil) = %x, Hash(&Payload{}) = %x; want equal", hn, he)
			}
		})
	})

	t.Run("differs", func(t *testing.T) {
		tests := []struct {
			name      string
			namespace string
			objName   string
			edit      func(*Payload)
		}{
			{"namespace", "ns2", "n", func(*Payload) {}},
			{"name", "ns", "n2", func(*Payload) {}},
			{"namespace/name boundary", "nsn", "", func(*Payload) {}},
			{"deleted", "ns", "n", func(p *Payload) { p.Deleted = true }},
			{"type", "ns", "n", func(p *Payload) { p.Type = "Opaque" }},
			{"immutable", "ns", "n", func(p *Payload) { p.Immutable = true }},
			{"data key renamed", "ns", "n", func(p *Payload) { p.Data["tls.crt2"] = p.Data["tls.crt"]; delete(p.Data, "tls.crt") }},
			{"data key added", "ns", "n", func(p *Payload) { p.Data["ca.crt"] = nil }},
			{"data key removed", "ns", "n", func(p *Payload) { delete(p.Data, "tls.key") }},
			{"data value", "ns", "n", func(p *Payload) { p.Data["tls.key"] = []byte("kez") }},
			{"data key/value boundary", "ns", "n", func(p *Payload) { delete(p.Data, "ab"); p.Data["a"] = []byte("bc") }},
			{"label value", "ns", "n", func(p *Payload) { p.Labels["app"] = "api" }},
			{"label key", "ns", "n", func(p *Payload) { p.Labels["app2"] = p.Labels["app"]; delete(p.Labels, "app") }},
			{"annotation value", "ns", "n", func(p *Payload) { p.Annotations["note"] = "y" }},
			{"annotation added", "ns", "n", func(p *Payload) { p.Annotations["x"] = "" }},
			{"label moved to annotations", "ns", "n", func(p *Payload) { p.Annotations["tier"] = "front"; delete(p.Labels, "tier") }},
			{"annotation moved to labels", "ns", "n", func(p *Payload) { p.Labels["note"] = "x"; delete(p.Annotations, "note") }},
			{"data moved to labels", "ns", "n", func(p *Payload) { p.Labels["ab"] = "c"; delete(p.Data, "ab") }},
			{"type moved into data", "ns", "n", func(p *Payload) { p.Type = ""; p.Data[""] = []byte("kubernetes.io/tls") }},
		}
		seen := map[string]string{hex.EncodeToString(want): "base"}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				p := base()
				tt.edit(p)
				got := hex.EncodeToString(k.Hash(tt.namespace, tt.objName, p))
				if prev, ok := seen[got]; ok {
					t.Errorf("Hash after %s = %s; same as %s", tt.name, got, prev)
				}
				seen[got] = tt.name
			})
		}
	})

	t.Run("per key", func(t *testing.T) {
		if other := mustKeys(t, cryptoOtherKey).Hash("ns", "n", base()); bytes.Equal(other, want) {
			t.Errorf("Hash under two keys = %x; want different", want)
		}
	})

	t.Run("does not mutate", func(t *testing.T) {
		p := base()
		k.Hash("ns", "n", p)
		if d := diffPayload(p, base()); d != "" {
			t.Errorf("Hash changed its payload: %s", d)
		}
	})
}

func raceDetectorOn() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

func TestHashAllocs(t *testing.T) {
	if raceDetectorOn() {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	k := mustKeys(t, cryptoTestKey)
	p := tlsPayload()
	k.Hash("ns", "n", p) // warm the pool
	// The only allocation is the returned sum.
	if n := testing.AllocsPerRun(100, func() { k.Hash("ns", "n", p) }); n > 1 {
		t.Errorf("Hash allocates %v times per call; want at most 1", n)
	}
}
