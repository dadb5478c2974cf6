package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// payloadEncodings are plaintexts as encodePayload writes them.
func payloadEncodings(t testing.TB) map[string][]byte {
	at := time.Date(2026, 12, 2, 10, 11, 12, 130000000, time.UTC)
	out := map[string][]byte{}
	for name, p := range map[string]*Payload{
		"tls":       tlsPayload(),
		"test":      cryptoTestPayload(),
		"tombstone": {Deleted: true, UpdatedAt: at},
		"empty":     {},
		"everything": {Type: "Opaque", Immutable: true, UpdatedAt: at.In(time.FixedZone("x", 3600)),
			Data:        map[string][]byte{"": {}, "a": {0, 1, 2, 255}, "b.c": []byte("é")},
			Labels:      map[string]string{"l": "", "ü": "ä"},
			Annotations: map[string]string{"a": "b"}},
	} {
		pt, err := encodePayload(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = append([]byte(nil), pt.bytes...)
		pt.release()
	}
	return out
}

// TestDecodePayloadTakesTheFastPath: what our leaders write is decoded
// without encoding/json, and to what encoding/json decodes.
func TestDecodePayloadTakesTheFastPath(t *testing.T) {
	for name, b := range payloadEncodings(t) {
		var fast, slow Payload
		if !decodeCanonical(b, &fast) {
			t.Errorf("%s: not read by the fast path: %s", name, b)
			continue
		}
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Errorf("%s: fast path %+v; json.Unmarshal %+v", name, fast, slow)
		}
	}
}

// TestDecodePayloadFallsBack: what the fast path does not read is still
// decoded, or refused, as encoding/json does.
func TestDecodePayloadFallsBack(t *testing.T) {
	ts := `"updatedAt":"2026-12-02T10:11:12Z"`
	for _, in := range []string{
		`{"type":"a\u003cb",` + ts + `}`,     // an escape
		`{"Type":"x",` + ts + `}`,            // json matches names without case
		`{ "type":"x",` + ts + `}`,           // a space
		`{` + ts + `,"type":"x"}`,            // another order
		`{"type":"x","type":"y",` + ts + `}`, // a field twice
		`{"data":{"k":null},` + ts + `}`,     // null bytes
		`{"data":{"k":"!!"},` + ts + `}`,     // bad base64: an error
		`{"type":"x",` + ts + `,"more":1}`,   // an unknown field
		`{"type":"\xff",` + ts + `}`,         // invalid UTF-8, replaced
		`{"type":"x"}`,                       // no time
		`{"type":"x",` + ts + `}x`,           // trailing bytes: an error
		`{"updatedAt":"yesterday"}`,          // a bad time: an error
	} {
		var fast Payload
		if decodeCanonical([]byte(in), &fast) {
			t.Errorf("%s: read by the fast path", in)
		}
		checkDecodesAsJSON(t, []byte(in))
	}
}

func checkDecodesAsJSON(t *testing.T, in []byte) {
	t.Helper()
	var got, want Payload
	err := decodePayload(in, &got)
	wantErr := json.Unmarshal(in, &want)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("%q: error %v; json.Unmarshal's %v", in, err, wantErr)
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: %+v; json.Unmarshal %+v", in, got, want)
	}
}

// FuzzDecodePayload: decodePayload is json.Unmarshal, for any input.
func FuzzDecodePayload(f *testing.F) {
	for _, b := range payloadEncodings(f) {
		f.Add(b)
		f.Add([]byte(strings.Replace(string(b), `"`, `\"`, 3)))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkDecodesAsJSON(t, in)
	})
}

func BenchmarkDecodePayload(b *testing.B) {
	in := payloadEncodings(b)["tls"]
	for _, bc := range []struct {
		name   string
		decode func([]byte, *Payload) error
	}{{"fast", decodePayload}, {"encoding-json", func(b []byte, p *Payload) error { return json.Unmarshal(b, p) }}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				var p Payload
				if err := bc.decode(in, &p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
