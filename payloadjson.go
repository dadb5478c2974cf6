package main

// A fast encoder and decoder for the payloads our own leaders write. A
// leader encodes every Secret it seals and a follower decodes every row it
// applies; encoding/json's reflection,
// map sorting, validity scan and per-byte state machine were about a tenth
// of either daemon's CPU in an initial sync.
//
// Both handle the canonical form, json.Marshal's (the fields in their
// order, no spaces, sorted map keys), for the strings that need no escape,
// and hand everything else to encoding/json: appendCanonical writes what
// json.Marshal writes (FuzzEncodePayload), and decodePayload gives what
// json.Unmarshal gives, errors included, for any input (FuzzDecodePayload).

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"
)

// appendCanonical appends json.Marshal(p) to b, and reports false (with b
// extended by anything) where a string needs an escape or the time cannot
// be encoded, for encoding/json to write or refuse.
func appendCanonical(b []byte, p *Payload) ([]byte, bool) {
	b = append(b, '{')
	if p.Deleted {
		b = append(b, `"deleted":true,`...)
	}
	ok := true
	if p.Type != "" {
		b = append(b, `"type":`...)
		b, ok = appendPlainString(b, p.Type)
		b = append(b, ',')
	}
	if len(p.Data) > 0 {
		b = append(b, `"data":{`...)
		for i, k := range slices.Sorted(maps.Keys(p.Data)) {
			if i > 0 {
				b = append(b, ',')
			}
			var keyOK bool
			b, keyOK = appendPlainString(b, k)
			b = append(b, ':')
			if v := p.Data[k]; v == nil {
				b = append(b, "null"...)
			} else {
				b = append(b, '"')
				b = base64.StdEncoding.AppendEncode(b, v)
				b = append(b, '"')
			}
			ok = ok && keyOK
		}
		b = append(b, "},"...)
	}
	if p.Immutable {
		b = append(b, `"immutable":true,`...)
	}
	for _, m := range []struct {
		field string
		m     map[string]string
	}{{`"labels":{`, p.Labels}, {`"annotations":{`, p.Annotations}} {
		if len(m.m) == 0 {
			continue
		}
		b = append(b, m.field...)
		for i, k := range slices.Sorted(maps.Keys(m.m)) {
			if i > 0 {
				b = append(b, ',')
			}
			var keyOK, valueOK bool
			b, keyOK = appendPlainString(b, k)
			b = append(b, ':')
			b, valueOK = appendPlainString(b, m.m[k])
			ok = ok && keyOK && valueOK
		}
		b = append(b, "},"...)
	}
	b = append(b, `"updatedAt":`...)
	// time.Time's own encoding, as json.Marshal calls it.
	at, err := p.UpdatedAt.MarshalJSON()
	b = append(b, at...)
	return append(b, '}'), ok && err == nil
}

// appendPlainString appends s quoted, and reports false where json.Marshal
// would escape a byte of it: a control character, a quote, a backslash,
// HTML's <, > and &, U+2028, U+2029, or invalid UTF-8.
func appendPlainString(b []byte, s string) ([]byte, bool) {
	b = append(b, '"')
	b = append(b, s...)
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case plainASCII[c]:
		case c < utf8.RuneSelf:
			return b, false
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
				return b, false
			}
			i += size - 1
		}
	}
	return b, true
}

// plainASCII: the ASCII bytes json.Marshal writes as they are; not a
// control character, a quote, a backslash, or HTML's <, > and &.
var plainASCII = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = !strings.ContainsRune(`"\<>&`, rune(c))
	}
	return t
}()

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
