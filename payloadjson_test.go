package main

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// encodingCases are payloads of every shape, for the encoder's tests:
// canonical ones and ones that need encoding/json.
func encodingCases() map[string]*Payload {
	at := time.Date(2026, 12, 2, 10, 11, 12, 130000000, time.UTC)
	return map[string]*Payload{
		"tls":       tlsPayload(),
		"tombstone": {Deleted: true, UpdatedAt: at},
		"empty":     {},
		"nil value": {Data: map[string][]byte{"a": nil, "b": {}}, UpdatedAt: at},
		"empty maps": {Data: map[string][]byte{}, Labels: map[string]string{},
			Annotations: map[string]string{}, UpdatedAt: at},
		"lt":        {Type: "a<b", UpdatedAt: at},
		"gt":        {Labels: map[string]string{">": "x"}, UpdatedAt: at},
		"amp":       {Annotations: map[string]string{"x": "&"}, UpdatedAt: at},
		"data key":  {Data: map[string][]byte{"\x00": {1}}, UpdatedAt: at},
		"quote":     {Labels: map[string]string{"q\"": "x"}, UpdatedAt: at},
		"backslash": {Labels: map[string]string{"b": "\\"}, UpdatedAt: at},
		"control":   {Labels: map[string]string{"t": "\t"}, UpdatedAt: at},
		"invalid":   {Labels: map[string]string{"t": "\xff"}, UpdatedAt: at},
		"line sep":  {Annotations: map[string]string{"s": "a\u2028b"}, UpdatedAt: at},
		"para sep":  {Annotations: map[string]string{"s": "a\u2029b"}, UpdatedAt: at},
		"unicode":   {Annotations: map[string]string{"s": "a\u2027b€𝄞"}, UpdatedAt: at},
		"year":      {Type: "x", UpdatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		"everything": {Type: "Opaque", Immutable: true, UpdatedAt: at.In(time.FixedZone("x", 3600)),
			Data:        map[string][]byte{"": {}, "a": {0, 1, 2, 255}, "b.c": []byte("é")},
			Labels:      map[string]string{"l": "", "ü": "ä"},
			Annotations: map[string]string{"a": "b"}},
	}
}

// TestAppendCanonicalIsJSONMarshal: where the fast encoder says it wrote
// the payload, it wrote json.Marshal's bytes; it declines only where a
// string needs an escape or the time cannot be encoded, and then
// encodePayload still writes (or refuses) what json.Marshal does.
func TestAppendCanonicalIsJSONMarshal(t *testing.T) {
	declines := map[string]bool{"lt": true, "gt": true, "amp": true, "data key": true,
		"quote": true, "backslash": true, "control": true, "invalid": true, "line sep": true, "para sep": true, "year": true}
	for name, p := range encodingCases() {
		checkEncodesAsJSON(t, p)
		if _, ok := appendCanonical(nil, p); ok == declines[name] {
			t.Errorf("%s: fast path taken %v, want %v", name, ok, !declines[name])
		}
	}
}

func checkEncodesAsJSON(t *testing.T, p *Payload) {
	t.Helper()
	want, wantErr := json.Marshal(p)
	if fast, ok := appendCanonical(nil, p); ok && (wantErr != nil || !bytes.Equal(fast, want)) {
		t.Fatalf("%+v: fast path wrote %s; json.Marshal %s, %v", p, fast, want, wantErr)
	}
	if checkUTF8(p) != nil {
		return // encodePayload refuses it before encoding
	}
	pt, err := encodePayload(p)
	if wantErr != nil {
		if err == nil {
			t.Fatalf("%+v: encoded; json.Marshal: %v", p, wantErr)
		}
		return
	}
	defer pt.release()
	if err != nil || !bytes.Equal(pt.bytes, want) {
		t.Fatalf("%+v: encodePayload %s, %v; json.Marshal %s", p, pt.bytes, err, want)
	}
}

// FuzzEncodePayload: encodePayload writes json.Marshal's bytes, for
// payloads built from any strings and bytes.
func FuzzEncodePayload(f *testing.F) {
	f.Add("Opaque", "tls.crt", []byte("data"), "app", "x<y", int64(1764670272), false)
	f.Add("", "", []byte(nil), "\u2028", "\xff", int64(-62135596800), true)
	f.Fuzz(func(t *testing.T, typ, key string, value []byte, label, annotation string, unix int64, flags bool) {
		p := &Payload{Type: typ, Deleted: flags, Immutable: !flags,
			Data:        map[string][]byte{key: value, key + "2": nil},
			Labels:      map[string]string{label: annotation},
			Annotations: map[string]string{annotation: label, "k": typ},
			UpdatedAt:   time.Unix(unix, unix%1e9).In(time.FixedZone("z", int(unix%50000))),
		}
		checkEncodesAsJSON(t, p)
		checkSealableAsSeal(t, p)
	})
}

// checkSealableAsSeal: CheckSealable refuses p exactly when encodePayload
// (what Seal encrypts) does, and sealedSizeBound bounds what Seal writes.
func checkSealableAsSeal(t *testing.T, p *Payload) {
	t.Helper()
	pt, err := encodePayload(p)
	defer pt.release()
	if got := CheckSealable(p); fmt.Sprint(got) != fmt.Sprint(err) {
		t.Fatalf("CheckSealable = %v; encodePayload: %v", got, err)
	}
	if err == nil && sealedSize(pt.bytes) > sealedSizeBound(p) {
		t.Fatalf("sealed size %d above sealedSizeBound %d", sealedSize(pt.bytes), sealedSizeBound(p))
	}
}

// TestCheckSealable: near the size limit, where CheckSealable encodes
// the payload, and away from it, where it only bounds its size.
func TestCheckSealable(t *testing.T) {
	// Data whose base64 is room bytes short of the limit.
	data := func(room int) map[string][]byte {
		return map[string][]byte{"k": make([]byte, (MaxCiphertextSize-room)/4*3)}
	}
	escaped := strings.Repeat("<", 2000) // 12,000 bytes escaped (\u003c)
	for _, tt := range []struct {
		name       string
		p          *Payload
		overBound  bool // sealedSizeBound above the limit: encoded to tell
		wantRefuse bool
	}{
		{"small", cryptoTestPayload(), false, false},
		{"nil", nil, false, true},
		{"invalid UTF-8", &Payload{Type: "a\xffb"}, false, true},
		{"just fits", &Payload{Data: data(100)}, true, false},
		{"just too large", &Payload{Data: data(0)}, true, true},
		{"escapes tip it over", &Payload{Data: data(8000), Annotations: map[string]string{"a": escaped}}, true, true},
		{"escapes, room left", &Payload{Data: data(40000), Labels: map[string]string{escaped: escaped}}, false, false},
		{"year 10000", &Payload{UpdatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, false, true},
		{"year -1", &Payload{UpdatedAt: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)}, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			checkSealableAsSeal(t, tt.p)
			if tt.p != nil && (sealedSizeBound(tt.p) > MaxCiphertextSize) != tt.overBound {
				t.Errorf("sealedSizeBound %d, limit %d; want above it: %v", sealedSizeBound(tt.p), MaxCiphertextSize, tt.overBound)
			}
			if err := CheckSealable(tt.p); (err != nil) != tt.wantRefuse {
				t.Errorf("CheckSealable = %v; want refused: %v", err, tt.wantRefuse)
			}
		})
	}
}

func BenchmarkEncodePayload(b *testing.B) {
	p := tlsPayload()
	for _, bc := range []struct {
		name   string
		encode func(*Payload) ([]byte, error)
	}{
		{"fast", func(p *Payload) ([]byte, error) {
			pt, err := encodePayload(p)
			pt.release()
			return nil, err
		}},
		{"encoding-json", func(p *Payload) ([]byte, error) { return json.Marshal(p) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.encode(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCheckSealable: what the leader's check of each Secret before
// its transaction costs, against encoding the payload (which the check
// did until it bounded the size instead).
func BenchmarkCheckSealable(b *testing.B) {
	p := tlsPayload()
	b.Run("check", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := CheckSealable(p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			pt, err := encodePayload(p)
			if err != nil {
				b.Fatal(err)
			}
			pt.release()
		}
	})
}
