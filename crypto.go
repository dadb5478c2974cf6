// This file holds the wire format of kube-secret-sync (how a Secret is sealed
// before it reaches the shared SQL database and opened again on a follower)
// and the rules for its keys: what a valid key is, how a list of keys is
// written, how a fresh one is generated, and the keyring that holds them.
// The keyed change hash is in hash.go.
//
// Threat model: anyone who can read the database must learn nothing beyond a
// row's namespace and name (not key names, labels, annotations or whether two
// rows hold the same value); anyone who can write it must not be able to
// forge a row, move a row to another (namespace, name), replay an old row
// under a newer version, attribute it to another source cluster, or delete a
// Secret by flipping a column. Everything a follower acts on is therefore
// inside the AES-256-GCM ciphertext or bound to it as associated data.
//
// Deliberately free of Kubernetes and database imports (boundary_test.go
// fails the build's tests otherwise), and randomness is a parameter, so that
// the format can be tested deterministically and re-implemented from this
// file and hash.go alone.

package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
	"unicode/utf8"
)

// Sentinel errors. Callers test them with errors.Is; the returned errors may
// wrap them with detail (sizes, key ids) but never with key material or
// plaintext.
var (
	// ErrKeyLength: ENCRYPTION_KEY is used as AES-256 key material, so it
	// must be exactly 32 bytes, i.e. 32 ASCII characters.
	ErrKeyLength = errors.New("encryption key must be exactly 32 bytes (32 ASCII characters)")
	// ErrWrongKey: the row was sealed under a key whose id is not ours
	// (ENCRYPTION_KEY differs between clusters, or a key rotation is under way).
	ErrWrongKey = errors.New("ciphertext was sealed under a different encryption key")
	// ErrUnsupportedFormat: the first byte names a format this build does
	// not know, for example a row written by a newer leader.
	ErrUnsupportedFormat = errors.New("unsupported ciphertext format")
	// ErrTruncated: shorter than format byte + nonce + tag.
	ErrTruncated = errors.New("ciphertext truncated")
	// ErrTooLarge: longer than MaxCiphertextSize; refused before any work.
	ErrTooLarge = errors.New("ciphertext too large")
	// ErrAuth: GCM authentication failed. The row was tampered with, or it is
	// bound to another namespace, name, version, key id or source cluster.
	ErrAuth = errors.New("ciphertext authentication failed")
	// ErrInvalidPayload: Seal refuses a payload that would not survive the
	// round trip unchanged (a string that is not valid UTF-8, which JSON would
	// silently rewrite), rather than let the follower apply something else.
	ErrInvalidPayload = errors.New("payload cannot be sealed faithfully")
)

// MaxCiphertextSize bounds what Open accepts and what Seal produces. A
// Secret is at most ~1 MiB; base64 inside JSON adds a third. Refusing larger
// input first keeps a hostile row from costing a follower memory or CPU.
const MaxCiphertextSize = 4 << 20

// Wire-format constants. Changing any of them breaks every stored row: add a
// new format instead.
const (
	// formatV1 is the first byte of every ciphertext written by this build.
	formatV1 byte = 1

	// nonceSize is GCM's standard 96-bit nonce. It is random per Seal: with
	// one key shared by every row, a counter would need coordination across
	// leaders, and the birthday bound of 2^32 messages per key is far above
	// what Secret churn produces.
	nonceSize = 12
	tagSize   = 16
	// minCiphertextSize is an empty GCM plaintext; a valid row is longer
	// (the JSON is never empty) but authentication decides that.
	minCiphertextSize = 1 + nonceSize + tagSize

	// HKDF info strings: one per subkey, so the AES key, the MAC key and
	// the published key id are computationally independent. Publishing the
	// key id or a MAC therefore tells nothing about the AES key.
	infoAEAD  = "kube-secret-sync v1 aes-256-gcm"
	infoMAC   = "kube-secret-sync v1 hmac-sha256"
	infoKeyID = "kube-secret-sync v1 key-id"

	// Domain strings open each associated data and each hashed encoding so
	// that a MAC or an associated data can never be mistaken for another
	// structure, in this format or a later one.
	domainRow  = "kube-secret-sync row v1"
	domainHash = "kube-secret-sync hash v1"

	keyIDSize = 8
)

// Keys holds the subkeys derived from ENCRYPTION_KEY. It is safe for
// concurrent use: the AEAD is stateless once built, and HMAC states come
// from a pool because a hash.Hash is not. A *Keys must not be copied.
type Keys struct {
	aead   cipher.AEAD
	id     string
	macKey []byte
	macs   sync.Pool // of *hashState
}

// NewKeys derives the AEAD key, the HMAC key and the key id from the
// ENCRYPTION_KEY with HKDF-SHA256 (no salt; one info string per subkey).
//
// "Exactly 32 characters" means 32 bytes: the original tool handed the string
// to AES-256 as raw key bytes, so a non-ASCII key of 32 characters (more than
// 32 bytes) is refused rather than silently reinterpreted. HKDF does not
// strengthen a guessable key: generate it, e.g. `openssl rand -base64 24`.
func NewKeys(key string) (*Keys, error) {
	// 32 bytes that are also 32 characters: ASCII only, so that "exactly
	// 32 characters" holds whichever way an operator counts. The length is
	// reported, the key never is.
	for i := 0; i < len(key); i++ {
		if key[i] >= utf8.RuneSelf {
			return nil, fmt.Errorf("%w: got %d bytes in %d characters; use ASCII characters only", ErrKeyLength, len(key), utf8.RuneCountInString(key))
		}
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("%w: got %d", ErrKeyLength, len(key))
	}
	prk, err := hkdf.Extract(sha256.New, []byte(key), nil)
	if err != nil {
		return nil, fmt.Errorf("derive keys: %w", err)
	}
	aeadKey, err := hkdf.Expand(sha256.New, prk, infoAEAD, 32)
	if err != nil {
		return nil, fmt.Errorf("derive aead key: %w", err)
	}
	macKey, err := hkdf.Expand(sha256.New, prk, infoMAC, 32)
	if err != nil {
		return nil, fmt.Errorf("derive mac key: %w", err)
	}
	id, err := hkdf.Expand(sha256.New, prk, infoKeyID, keyIDSize)
	if err != nil {
		return nil, fmt.Errorf("derive key id: %w", err)
	}
	block, err := aes.NewCipher(aeadKey)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("gcm: %w", err)
	}
	k := &Keys{aead: aead, id: hex.EncodeToString(id), macKey: macKey}
	k.macs.New = func() any {
		return &hashState{mac: hmac.New(sha256.New, k.macKey)}
	}
	return k, nil
}

// ID returns the key id: 16 lowercase hex characters stored next to each row
// so that a follower with a different ENCRYPTION_KEY reports ErrWrongKey
// instead of a misleading ErrAuth. It is an independent HKDF output, so it
// reveals nothing about the AES or MAC key.
func (k *Keys) ID() string { return k.id }

// splitKeys splits a list of keys (PREVIOUS_ENCRYPTION_KEYS). Every key is exactly 32
// ASCII characters, so the list is cut by position, not at every comma: a
// key may itself contain a comma (an ENCRYPTION_KEY was never restricted),
// and it can still be listed. Errors give positions and lengths, never
// key material.
func splitKeys(list string) ([]string, error) {
	if list == "" {
		return nil, nil
	}
	for i := 0; i < len(list); i++ {
		if list[i] >= utf8.RuneSelf {
			return nil, fmt.Errorf("%w: use ASCII characters only", ErrKeyLength)
		}
	}
	var keys []string
	for {
		if len(list) < 32 {
			return nil, fmt.Errorf("previous key %d: %w: got %d", len(keys)+1, ErrKeyLength, len(list))
		}
		keys = append(keys, list[:32])
		list = list[32:]
		if list == "" {
			return keys, nil
		}
		if list[0] != ',' {
			return nil, fmt.Errorf("previous key %d: %w, with a comma between two keys", len(keys), ErrKeyLength)
		}
		list = list[1:]
	}
}

// keygenBytes random bytes make exactly 32 base64 characters: 192 bits,
// from the URL-safe alphabet (no comma, quote or slash to escape in a
// YAML file or a shell).
const keygenBytes = 24

// generateKey returns a fresh random key suitable for ENCRYPTION_KEY.
func generateKey(rand io.Reader) (string, error) {
	b := make([]byte, keygenBytes)
	if _, err := io.ReadFull(rand, b); err != nil {
		return "", fmt.Errorf("read random bytes: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Keyring is the current key, which seals and hashes everything written,
// plus the previous keys of a rotation, which still open (and hash) rows
// written under them. Rows are looked up by the key id stored next to them,
// so a ciphertext is only ever tried with the one key that claims it. It is
// safe for concurrent use.
type Keyring struct {
	current *Keys
	byID    map[string]*Keys
}

// NewKeyring builds the keyring from ENCRYPTION_KEY and the previous keys.
// Every key is validated like ENCRYPTION_KEY; an error names the previous
// key by position (1-based), never by value. A previous key equal to the
// current one is ignored.
func NewKeyring(current string, previous ...string) (*Keyring, error) {
	cur, err := NewKeys(current)
	if err != nil {
		return nil, err
	}
	r := &Keyring{current: cur, byID: map[string]*Keys{cur.ID(): cur}}
	for i, key := range previous {
		k, err := NewKeys(key)
		if err != nil {
			return nil, fmt.Errorf("previous key %d: %w", i+1, err)
		}
		if _, dup := r.byID[k.ID()]; !dup {
			r.byID[k.ID()] = k
		}
	}
	return r, nil
}

// ID is the current key's id: the one every row should end up under.
func (r *Keyring) ID() string { return r.current.ID() }

// IDs lists the ids of every key in the ring, the current one first.
func (r *Keyring) IDs() []string {
	ids := []string{r.current.ID()}
	for id := range r.byID {
		if id != r.current.ID() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids[1:])
	return ids
}

// Seal seals under the current key.
func (r *Keyring) Seal(rand io.Reader, b Binding, p *Payload) ([]byte, error) {
	return r.current.Seal(rand, b, p)
}

// Hash is the change hash under the current key.
func (r *Keyring) Hash(namespace, name string, p *Payload) []byte {
	return r.current.Hash(namespace, name, p)
}

// HashFor is the change hash under the key keyID, so that a row written
// before a rotation can be compared with a copy; ok is false for a key
// that is not in the ring.
func (r *Keyring) HashFor(keyID, namespace, name string, p *Payload) (sum []byte, ok bool) {
	k := r.byID[keyID]
	if k == nil {
		return nil, false
	}
	return k.Hash(namespace, name, p), true
}

// Open opens a row with the key its key id names: the current key or a
// previous one. A key id not in the ring is ErrWrongKey.
func (r *Keyring) Open(b Binding, keyID string, ciphertext []byte) (*Payload, error) {
	k := r.byID[keyID]
	if k == nil {
		return nil, fmt.Errorf("%w: row key id %q, known %q", ErrWrongKey, capKeyID(keyID), r.IDs())
	}
	return k.Open(b, keyID, ciphertext)
}

// capKeyID shortens a key id read from a row for an error message. Key ids
// are not secret, but the database may hold anything in that column.
func capKeyID(id string) string {
	if len(id) > 2*keyIDSize {
		return id[:2*keyIDSize] + "..."
	}
	return id
}

// Binding is what a ciphertext is bound to through GCM's associated data. A
// row moved to another (namespace, name), replayed under another version, or
// attributed to another source cluster fails to open.
type Binding struct {
	Namespace, Name string
	Version         int64 // the database row version assigned in the writing transaction
	SourceCluster   string
}

// Payload is the plaintext: everything the follower must reproduce. Empty
// maps come back from Open as nil, which Kubernetes treats the same.
type Payload struct {
	Deleted     bool              `json:"deleted,omitempty"` // tombstone: authenticated, so a DB writer cannot delete a Secret by flipping a column
	Type        string            `json:"type,omitempty"`
	Data        map[string][]byte `json:"data,omitempty"`
	Immutable   bool              `json:"immutable,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	UpdatedAt   time.Time         `json:"updatedAt"` // when the leader saw this content change; NOT part of Hash
}

// Seal encrypts p for binding b. Output:
//
//	formatV1 (1 byte, value 1) || nonce (12 bytes read from rand) || AES-256-GCM ciphertext and tag
//
// The plaintext is the JSON encoding of p; the associated data is
// associatedData(b, k.ID()). The whole ciphertext is at most
// MaxCiphertextSize, so that every row a leader writes can be opened.
func (k *Keys) Seal(rand io.Reader, b Binding, p *Payload) ([]byte, error) {
	plaintext, err := encodePayload(p)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	defer plaintext.release()
	out := make([]byte, 1+nonceSize, sealedSize(plaintext.bytes))
	out[0] = formatV1
	nonce := out[1 : 1+nonceSize]
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, fmt.Errorf("seal: read nonce: %w", err)
	}
	return k.aead.Seal(out, nonce, plaintext.bytes, associatedData(b, k.id)), nil
}

// CheckSealable reports why Seal would refuse p whatever the binding
// (ErrInvalidPayload, ErrTooLarge), or nil. The leader asks before it
// opens a write transaction, so that one Secret that cannot be stored is
// refused alone instead of failing the transaction of every other row.
//
// It encodes p only when p may be near the size limit: a first pass checks
// every Secret, and encoding each here as well as in Seal was about 6% of
// the leader's CPU in an initial sync.
func CheckSealable(p *Payload) error {
	if p == nil {
		return fmt.Errorf("%w: nil payload", ErrInvalidPayload)
	}
	if err := checkUTF8(p); err != nil {
		return err
	}
	if y := p.UpdatedAt.Year(); y >= 0 && y <= 9999 && sealedSizeBound(p) <= MaxCiphertextSize {
		return nil // what encodePayload checks beyond that cannot fail
	}
	plaintext, err := encodePayload(p)
	plaintext.release()
	return err
}

// sealedSizeBound is at least the length of Seal's output for p, which
// must have a timestamp that JSON can encode (years 0 to 9999, at most 35
// bytes): every string counted as if each byte took JSON's longest escape
// (\u00XX), and 256 bytes for the names of the fields, their punctuation
// and the timestamp.
func sealedSizeBound(p *Payload) int { return sizeOfParts(p, 6, 8, 256) }

// plaintext is a payload's encoding in a recycled buffer (payloadBuffers).
type plaintext struct {
	bytes []byte
	buf   *bytes.Buffer
}

// payloadBuffers recycles the buffers that payloads are encoded into. A
// leader's first pass encodes 100,000 payloads: a new buffer each time was
// 10 MB of garbage per transaction,
// which a collector running near the memory limit keeps for a cycle.
var payloadBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBuffer: a larger buffer (a payload near MaxCiphertextSize) is
// left to the collector rather than kept.
const maxPooledBuffer = 64 << 10

// release wipes the plaintext, which holds a Secret's data in the clear
// (best effort: the caller's Payload is out of our hands), and recycles its
// buffer.
func (pt plaintext) release() {
	if pt.buf == nil {
		return
	}
	clear(pt.buf.Bytes())
	if pt.buf.Cap() <= maxPooledBuffer {
		payloadBuffers.Put(pt.buf)
	}
}

// encodePayload is the plaintext of p: its JSON (as json.Marshal writes
// it), refused when it would not survive the round trip or would seal to
// more than MaxCiphertextSize. Release it once used.
func encodePayload(p *Payload) (plaintext, error) {
	if p == nil {
		return plaintext{}, fmt.Errorf("%w: nil payload", ErrInvalidPayload)
	}
	if err := checkUTF8(p); err != nil {
		return plaintext{}, err
	}
	pt := plaintext{buf: payloadBuffers.Get().(*bytes.Buffer)}
	pt.buf.Reset()
	pt.buf.Grow(ApproxSealedSize(p)) // an upper bound for the canonical form
	avail := pt.buf.AvailableBuffer()
	out, ok := appendCanonical(avail, p)
	if ok {
		pt.buf.Write(out)
	}
	if !ok || len(out) > cap(avail) {
		// Plaintext outside the buffer's contents: a copy appended
		// beyond its capacity, or what the fallback does not overwrite.
		clear(avail[:cap(avail)])
		clear(out)
	}
	if !ok {
		// An Encoder writes what json.Marshal returns, and a newline.
		if err := json.NewEncoder(pt.buf).Encode(p); err != nil {
			pt.release()
			return plaintext{}, fmt.Errorf("encode payload: %w", err)
		}
	}
	pt.bytes = bytes.TrimSuffix(pt.buf.Bytes(), []byte("\n"))
	if size := sealedSize(pt.bytes); size > MaxCiphertextSize {
		pt.release()
		return plaintext{}, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, size, MaxCiphertextSize)
	}
	return pt, nil
}

func sealedSize(plaintext []byte) int { return 1 + nonceSize + len(plaintext) + tagSize }

// ApproxSealedSize estimates Seal's output for p without encoding it: the
// data base64-encoded plus the other strings and a fixed overhead. It
// ignores JSON escapes, so it is an estimate for sizing batches, not a
// bound.
func ApproxSealedSize(p *Payload) int { return sizeOfParts(p, 1, 6, 128) }

// sizeOfParts sizes Seal's output for p from its parts: each byte of its
// strings counted perByte times, the data base64-encoded, perEntry bytes
// for each entry of its maps and fixed bytes for the rest.
func sizeOfParts(p *Payload, perByte, perEntry, fixed int) int {
	n := 1 + nonceSize + tagSize + fixed + perByte*len(p.Type)
	for k, v := range p.Data {
		n += perByte*len(k) + base64.StdEncoding.EncodedLen(len(v)) + perEntry
	}
	for _, m := range []map[string]string{p.Labels, p.Annotations} {
		for k, v := range m {
			n += perByte*(len(k)+len(v)) + perEntry
		}
	}
	return n
}

// Open reverses Seal. The checks run cheapest and most informative first:
// key id (ErrWrongKey, before anything else, so a mismatched ENCRYPTION_KEY is
// diagnosed as such), size (ErrTooLarge, before any work), format byte
// (ErrUnsupportedFormat), length (ErrTruncated), then GCM with the same
// associated data as Seal (ErrAuth). Nothing is decoded before it is
// authenticated.
func (k *Keys) Open(b Binding, keyID string, ciphertext []byte) (*Payload, error) {
	if keyID != k.id {
		return nil, fmt.Errorf("%w: row key id %q, ours %q", ErrWrongKey, capKeyID(keyID), k.id)
	}
	if len(ciphertext) > MaxCiphertextSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(ciphertext), MaxCiphertextSize)
	}
	if len(ciphertext) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrTruncated)
	}
	if ciphertext[0] != formatV1 {
		return nil, fmt.Errorf("%w: %d", ErrUnsupportedFormat, ciphertext[0])
	}
	if len(ciphertext) < minCiphertextSize {
		return nil, fmt.Errorf("%w: %d bytes, minimum %d", ErrTruncated, len(ciphertext), minCiphertextSize)
	}
	nonce := ciphertext[1 : 1+nonceSize]
	plaintext, err := k.aead.Open(nil, nonce, ciphertext[1+nonceSize:], associatedData(b, k.id))
	if err != nil {
		// GCM's error says nothing more; do not wrap it.
		return nil, ErrAuth
	}
	// The decoded Payload holds its own copies, so the buffer can be wiped.
	defer clear(plaintext)
	var p Payload
	if err := decodePayload(plaintext, &p); err != nil {
		return nil, fmt.Errorf("decode payload: %w", err)
	}
	return &p, nil
}

// associatedData encodes what a ciphertext is bound to. Every variable-length
// field is length-prefixed, so ("ab", "c") and ("a", "bc") never collide:
//
//	lp("kube-secret-sync row v1") || formatV1 || lp(namespace) || lp(name) ||
//	lp(keyID) || uint64be(version) || lp(sourceCluster)
//
// where lp(s) = uint64be(len(s)) || s. The format byte is repeated inside so
// that a later format can never be confused with this one.
func associatedData(b Binding, keyID string) []byte {
	n := 8*5 + len(domainRow) + 1 + len(b.Namespace) + len(b.Name) + len(keyID) + 8 + len(b.SourceCluster)
	ad := make([]byte, 0, n)
	ad = appendString(ad, domainRow)
	ad = append(ad, formatV1)
	ad = appendString(ad, b.Namespace)
	ad = appendString(ad, b.Name)
	ad = appendString(ad, keyID)
	ad = binary.BigEndian.AppendUint64(ad, uint64(b.Version))
	ad = appendString(ad, b.SourceCluster)
	return ad
}

func appendString(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(len(s)))
	return append(dst, s...)
}

// checkUTF8 refuses strings that encoding/json would rewrite (invalid bytes
// become U+FFFD), since the follower would then apply a Secret other than the
// leader's. Data values are []byte (base64 in JSON) and need no check. The
// offending value is not quoted: it may be sensitive.
func checkUTF8(p *Payload) error {
	if !utf8.ValidString(p.Type) {
		return fmt.Errorf("%w: type is not valid UTF-8", ErrInvalidPayload)
	}
	for key := range p.Data {
		if !utf8.ValidString(key) {
			return fmt.Errorf("%w: a data key is not valid UTF-8", ErrInvalidPayload)
		}
	}
	for _, m := range []struct {
		what string
		m    map[string]string
	}{{"label", p.Labels}, {"annotation", p.Annotations}} {
		for key, v := range m.m {
			if !utf8.ValidString(key) || !utf8.ValidString(v) {
				return fmt.Errorf("%w: a %s is not valid UTF-8", ErrInvalidPayload, m.what)
			}
		}
	}
	return nil
}
