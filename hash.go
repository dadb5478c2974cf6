package main

// The keyed change hash stored next to each row. The leader compares it to
// tell whether a Secret changed, the follower to tell whether its copy is
// still what a row says, without decrypting anything. Like crypto.go it
// imports no Kubernetes or database code (boundary_test.go checks both).

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"slices"
)

// Hash returns the keyed change hash stored next to the row, 32 bytes:
// HMAC-SHA256 under the MAC subkey of
//
//	lp("kube-secret-sync hash v1") || lp(namespace) || lp(name) ||
//	bool(Deleted) || lp(Type) || bool(Immutable) ||
//	map(Data) || map(Labels) || map(Annotations)
//
// where lp is as in associatedData, bool is one byte 0 or 1, and map(m) =
// uint64be(len(m)) followed by lp(key) || lp(value) for each key in sorted
// order. The count prefix makes a label moved to the annotations a change.
//
// It is keyed so a database reader cannot test guesses of a value, and it
// includes namespace and name so two rows with equal content do not show
// equal hashes. UpdatedAt is excluded so an unchanged Secret hashes the same
// on every tick. nil and empty maps hash the same. A nil p hashes as an
// empty Payload.
func (k *Keys) Hash(namespace, name string, p *Payload) []byte {
	if p == nil {
		p = &Payload{}
	}
	h := k.macs.Get().(*hashState)
	h.mac.Reset()
	h.writeString(domainHash)
	h.writeString(namespace)
	h.writeString(name)
	h.writeBool(p.Deleted)
	h.writeString(p.Type)
	h.writeBool(p.Immutable)

	h.writeUint64(uint64(len(p.Data)))
	h.keys = appendSortedKeys(h.keys[:0], p.Data)
	for _, key := range h.keys {
		h.writeString(key)
		h.writeBytes(p.Data[key])
	}
	h.writeStringMap(p.Labels)
	h.writeStringMap(p.Annotations)

	h.flush()
	sum := h.mac.Sum(make([]byte, 0, sha256.Size))
	// Do not keep Secret key names alive in the pool.
	clear(h.keys[:cap(h.keys)])
	clear(h.buf[:cap(h.buf)])
	h.keys, h.buf = h.keys[:0], h.buf[:0]
	k.macs.Put(h)
	return sum
}

// hashState is one HMAC with scratch space, pooled per Keys so that Hash
// does not allocate beyond its result: small fields are batched in buf (an
// hmac Write per length prefix would dominate), large values go straight to
// the MAC without a copy.
type hashState struct {
	mac  hash.Hash
	buf  []byte
	keys []string
}

// hashBufSize is both the batching buffer's size and the threshold above
// which a value bypasses it.
const hashBufSize = 1024

func (h *hashState) flush() {
	if len(h.buf) > 0 {
		h.mac.Write(h.buf)
		h.buf = h.buf[:0]
	}
}

func (h *hashState) reserve(n int) {
	if h.buf == nil {
		h.buf = make([]byte, 0, hashBufSize)
	}
	if len(h.buf)+n > cap(h.buf) {
		h.flush()
	}
}

func (h *hashState) writeUint64(v uint64) {
	h.reserve(8)
	h.buf = binary.BigEndian.AppendUint64(h.buf, v)
}

func (h *hashState) writeBool(v bool) {
	h.reserve(1)
	if v {
		h.buf = append(h.buf, 1)
	} else {
		h.buf = append(h.buf, 0)
	}
}

func (h *hashState) writeBytes(v []byte) {
	h.writeUint64(uint64(len(v)))
	if len(v) > hashBufSize {
		h.flush()
		h.mac.Write(v)
		return
	}
	h.reserve(len(v))
	h.buf = append(h.buf, v...)
}

// writeString copies s through buf in chunks: converting it to []byte for
// mac.Write would allocate a copy as large as s (annotations can be big).
func (h *hashState) writeString(s string) {
	h.writeUint64(uint64(len(s)))
	for len(s) > 0 {
		h.reserve(min(len(s), hashBufSize))
		n := min(len(s), cap(h.buf)-len(h.buf))
		h.buf = append(h.buf, s[:n]...)
		s = s[n:]
	}
}

func (h *hashState) writeStringMap(m map[string]string) {
	h.writeUint64(uint64(len(m)))
	h.keys = appendSortedKeys(h.keys[:0], m)
	for _, key := range h.keys {
		h.writeString(key)
		h.writeString(m[key])
	}
}

func appendSortedKeys[V any](dst []string, m map[string]V) []string {
	for key := range m {
		dst = append(dst, key)
	}
	slices.Sort(dst)
	return dst
}
