package main

// A fast decoder for the payloads our own leaders write. A follower opens
// every row it applies, and encoding/json's reflection, validity scan and
// per-byte state machine were most of that cost (about a tenth of a
// follower's CPU in an initial sync). decodePayload reads the exact form
// encodePayload writes (json.Marshal's: the fields in their order, no
// spaces, sorted map keys) and gives anything else to json.Unmarshal, so
// its result is json.Unmarshal's for every input (FuzzDecodePayload).

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"unicode/utf8"
)

// decodePayload decodes plaintext into p as json.Unmarshal would.
func decodePayload(plaintext []byte, p *Payload) error {
	if decodeCanonical(plaintext, p) {
		return nil
	}
	*p = Payload{}
	return json.Unmarshal(plaintext, p)
}

// decodeCanonical decodes plaintext if it is in the form encodePayload
// writes, and reports whether it was: false leaves p in any state, for
// json.Unmarshal to decode from scratch.
func decodeCanonical(b []byte, p *Payload) bool {
	d := canonicalDecoder{b: b}
	if !d.byte('{') {
		return false
	}
	if d.field("deleted") && !d.bool(&p.Deleted) {
		return false
	}
	if d.field("type") {
		s, ok := d.string()
		if !ok {
			return false
		}
		p.Type = s
	}
	if d.field("data") && !d.bytesMap(&p.Data) {
		return false
	}
	if d.field("immutable") && !d.bool(&p.Immutable) {
		return false
	}
	if d.field("labels") && !d.stringMap(&p.Labels) {
		return false
	}
	if d.field("annotations") && !d.stringMap(&p.Annotations) {
		return false
	}
	if !d.field("updatedAt") {
		return false
	}
	raw, ok := d.rawString()
	// time.Time's own decoding, as json.Unmarshal calls it.
	if !ok || p.UpdatedAt.UnmarshalJSON(raw) != nil {
		return false
	}
	return d.byte('}') && d.off == len(d.b)
}

// canonicalDecoder reads b from off. Its methods report false for anything
// outside the canonical form, and the caller then falls back.
type canonicalDecoder struct {
	b     []byte
	off   int
	first bool // no field read yet in the current object
}

func (d *canonicalDecoder) byte(c byte) bool {
	if d.off < len(d.b) && d.b[d.off] == c {
		d.off++
		d.first = c == '{'
		return true
	}
	return false
}

func (d *canonicalDecoder) literal(s string) bool {
	if bytes.HasPrefix(d.b[d.off:], []byte(s)) {
		d.off += len(s)
		return true
	}
	return false
}

// field consumes `"name":` (after a comma unless it is the object's first
// field) if it comes next, and reports whether it did.
func (d *canonicalDecoder) field(name string) bool {
	off := d.off
	if !d.first && !d.byte(',') {
		return false
	}
	if d.literal(`"`) && d.literal(name) && d.literal(`":`) {
		d.first = false
		return true
	}
	d.off = off
	return false
}

func (d *canonicalDecoder) bool(v *bool) bool {
	switch {
	case d.literal("true"):
		*v = true
	case d.literal("false"):
		*v = false
	default:
		return false
	}
	return true
}

// rawString is the next string with its quotes, if it needs no unescaping
// (no backslash), holds no control character and is valid UTF-8, which is
// every string json.Marshal writes without an escape.
func (d *canonicalDecoder) rawString() ([]byte, bool) {
	if d.off >= len(d.b) || d.b[d.off] != '"' {
		return nil, false
	}
	ascii := true
	for i := d.off + 1; i < len(d.b); i++ {
		switch c := d.b[i]; {
		case c == '"':
			raw := d.b[d.off : i+1]
			if !ascii && !utf8.Valid(raw) {
				return nil, false // json.Unmarshal would replace bytes
			}
			d.off = i + 1
			return raw, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, false
}

func (d *canonicalDecoder) string() (string, bool) {
	raw, ok := d.rawString()
	if !ok {
		return "", false
	}
	return string(raw[1 : len(raw)-1]), true
}

// object reads `{"key":value,...}`, calling value after each key.
func (d *canonicalDecoder) object(value func(key string) bool) bool {
	if !d.byte('{') {
		return false
	}
	for !d.byte('}') {
		if !d.first && !d.byte(',') {
			return false
		}
		key, ok := d.string()
		if !ok || !d.byte(':') || !value(key) {
			return false
		}
		d.first = false
	}
	return true
}

func (d *canonicalDecoder) stringMap(m *map[string]string) bool {
	*m = map[string]string{}
	return d.object(func(key string) bool {
		v, ok := d.string()
		(*m)[key] = v
		return ok
	})
}

// bytesMap decodes base64 values with encoding/base64, as json.Unmarshal
// does for []byte.
func (d *canonicalDecoder) bytesMap(m *map[string][]byte) bool {
	*m = map[string][]byte{}
	return d.object(func(key string) bool {
		v, ok := d.base64()
		(*m)[key] = v
		return ok
	})
}

// base64 decodes the next string, which must be base64 and nothing else.
// The string is found without looking at each byte: a backslash or a
// quote is not in the base64 alphabet, so the first quote ends it, and the
// decoder refuses everything else json.Unmarshal would read differently,
// but for the line breaks it skips (raw ones are invalid JSON).
func (d *canonicalDecoder) base64() ([]byte, bool) {
	if d.off >= len(d.b) || d.b[d.off] != '"' {
		return nil, false
	}
	end := bytes.IndexByte(d.b[d.off+1:], '"')
	if end < 0 {
		return nil, false
	}
	s := d.b[d.off+1 : d.off+1+end]
	v := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(v, s)
	if err != nil || bytes.IndexByte(s, '\n') >= 0 || bytes.IndexByte(s, '\r') >= 0 {
		return nil, false
	}
	d.off += end + 2
	return v[:n], true
}
