package main

// Bucket digests: how a full pass learns what changed in the table without
// reading every row (issue 13: an idle pass reads a few KiB, not O(N)).
//
// Each daemon keeps an index of the rows' headers (what a row says, not its
// ciphertext). The rows are grouped in buckets by version range, and the
// database computes an MD5 over each bucket's headers in one query; the
// daemon computes the same from its index and reads the headers of only the
// buckets that differ. Writes it makes or pulls keep the index current, so
// an idle pass reads one digest per bucket and nothing else.
//
// The digest is a change detector, not a security boundary: what a row says
// is authenticated when it is opened (AES-GCM), and a database writer who
// makes a bucket's digest disagree for ever only makes that bucket be read on
// every pass.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// digestBuckets is about how many buckets a digest query returns: a few
// dozen bytes each.
const digestBuckets = 256

// bucketWidth is the version range of a bucket when the counter is at
// maxVersion: the least power of two that makes at most digestBuckets
// buckets, so that it changes only each time the counter doubles and the
// index's digests of its buckets stay valid between (rowIndex.digests).
func bucketWidth(maxVersion int64) int64 {
	w := int64(1)
	for maxVersion/w > digestBuckets {
		w <<= 1
	}
	return w
}

// bucketOf is the bucket of version: the same expression as the SQL's
// (Go's % truncates like SQL's, also for a forged negative version).
func bucketOf(version, width int64) int64 { return version - version%width }

// digestSQL computes each bucket's digest: the MD5 of its rows' lines
// (digestLine) joined by commas, in version order and, within a version,
// by the MD5 of the key, which sorts alike under every collation (hex
// digits only), unlike the names themselves.
const digestSQL = `
SELECT bucket, md5(string_agg(line, ',' ORDER BY version, key_sum))
FROM (
    SELECT version - version % $1 AS bucket, version, md5(namespace || '/' || name) AS key_sum,
           namespace || '/' || name || ' ' || CAST(version AS TEXT) || ' ' || key_id || ' ' || encode(hash, 'hex') || ' ' ||
           CASE WHEN tombstone THEN 't' ELSE 'f' END || ' ' || source_cluster AS line
    FROM kss_secrets
) AS r
GROUP BY bucket`

// appendDigestLine appends a row's line in its bucket's digest, as
// digestSQL makes it.
func appendDigestLine(b []byte, k ObjectKey, st *RowState) []byte {
	tomb := byte('f')
	if st.Tombstone {
		tomb = 't'
	}
	b = append(append(append(b, k.Namespace...), '/'), k.Name...)
	b = strconv.AppendInt(append(b, ' '), st.Version, 10)
	b = append(append(b, ' '), st.KeyID...)
	b = hex.AppendEncode(append(b, ' '), st.Hash)
	b = append(b, ' ', tomb, ' ')
	return append(b, st.SourceCluster...)
}

// Digests returns the digest of each non-empty bucket of width versions.
func (s *Store) Digests(ctx context.Context, width int64) (map[int64]string, error) {
	return s.bucketSums(ctx, "read row digests", digestSQL, width)
}

// bucketSums runs a query of (bucket, digest) rows.
func (s *Store) bucketSums(ctx context.Context, what, sql string, args ...any) (map[int64]string, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out := map[int64]string{}
	var bucket int64
	var sum string
	_, err = pgx.ForEachRow(rows, []any{&bucket, &sum}, func() error {
		out[bucket] = sum
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// StatesIn returns the states (with their ciphertexts' sizes) of the rows
// in buckets of width versions.
func (s *Store) StatesIn(ctx context.Context, buckets []int64, width int64) (map[ObjectKey]RowState, error) {
	rows, err := s.pool.Query(ctx, `
SELECT s.namespace, s.name, s.hash, s.tombstone, s.source_cluster, s.key_id, s.version, octet_length(s.ciphertext)
FROM kss_secrets AS s JOIN unnest($1::BIGINT[]) AS b (lo) ON s.version >= b.lo AND s.version < b.lo + $2`, buckets, width)
	if err != nil {
		return nil, fmt.Errorf("read row states: %w", err)
	}
	states := make(map[ObjectKey]RowState)
	var k ObjectKey
	var st RowState
	strs := interner{}
	_, err = pgx.ForEachRow(rows, []any{&k.Namespace, &k.Name, &st.Hash, &st.Tombstone, &st.SourceCluster, &st.KeyID, &st.Version, &st.Size}, func() error {
		k.Namespace, st.SourceCluster, st.KeyID = strs.of(k.Namespace), strs.of(st.SourceCluster), strs.of(st.KeyID)
		states[k] = st
		st.Hash = nil // Scan into a fresh slice next time.
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read row states: %w", err)
	}
	return states, nil
}

// interner shares the strings that repeat across rows (namespaces, source
// clusters, key ids): an index of 100,000 rows holds a handful of each.
type interner map[string]string

func (in interner) of(s string) string {
	if v, ok := in[s]; ok {
		return v
	}
	in[s] = s
	return s
}

// rowIndex mirrors the headers of the table's rows, keyed by Secret, and
// keeps the digests of its buckets (digestSQL's, from the index) up to
// date as rows change: a full pass recomputes only the buckets whose rows
// changed since the last one, not every row's (at 100,000 rows, the MD5 of
// every key and line and a sort, on every pass of a long first sync).
type rowIndex struct {
	// rows is read freely; it is written only through set and remove,
	// which keep the digests current.
	rows map[ObjectKey]RowState
	// sums are the digests of the buckets of width versions, but for the
	// dirty ones, whose rows changed since (width 0: none computed).
	width int64
	sums  map[int64]string
	dirty map[int64]bool
	// changes counts the calls of set and remove that may have changed
	// a row, so that a pass can tell that none did since another.
	changes uint64
}

func newRowIndex() *rowIndex {
	return &rowIndex{rows: map[ObjectKey]RowState{}, dirty: map[int64]bool{}}
}

// set makes st what the index knows of k's row.
func (idx *rowIndex) set(k ObjectKey, st RowState) {
	old, ok := idx.rows[k]
	idx.rows[k] = st
	idx.changes++
	if ok && sameHeader(&old, &st) {
		return // what the leader learnt of a row (verify.go) is in no digest
	}
	if ok {
		idx.touch(old.Version)
	}
	idx.touch(st.Version)
}

// remove forgets k's row.
func (idx *rowIndex) remove(k ObjectKey) {
	if old, ok := idx.rows[k]; ok {
		delete(idx.rows, k)
		idx.changes++
		idx.touch(old.Version)
	}
}

// touch marks the bucket of version as changed.
func (idx *rowIndex) touch(version int64) {
	if idx.width > 0 {
		idx.dirty[bucketOf(version, idx.width)] = true
	}
}

// digests computes what Digests returns, from the index: at the width of
// the last call, only the buckets changed since.
func (idx *rowIndex) digests(width int64) map[int64]string {
	switch {
	case width != idx.width:
		idx.width, idx.sums = width, idx.digestsOf(width, nil, appendDigestLine)
		clear(idx.dirty)
	case len(idx.dirty) > 0:
		fresh := idx.digestsOf(width, idx.dirty, appendDigestLine)
		for b := range idx.dirty {
			if sum, ok := fresh[b]; ok {
				idx.sums[b] = sum
			} else {
				delete(idx.sums, b) // emptied
			}
		}
		clear(idx.dirty)
	}
	return maps.Clone(idx.sums)
}

// sealDigests computes what Store.SealDigests returns for buckets, from
// the index's MD5s of the ciphertexts (verify.go).
func (idx *rowIndex) sealDigests(width int64, buckets []int64) map[int64]string {
	only := map[int64]bool{}
	for _, b := range buckets {
		only[b] = true
	}
	return idx.digestsOf(width, only, func(b []byte, _ ObjectKey, st *RowState) []byte {
		return hex.AppendEncode(b, st.Sealed[:])
	})
}

// digestsOf computes the digest of each bucket (of only, if not nil) over
// the lines that line appends for its rows, in the SQL's order. It
// allocates little: no line is kept.
func (idx *rowIndex) digestsOf(width int64, only map[int64]bool, line func(b []byte, k ObjectKey, st *RowState) []byte) map[int64]string {
	type entry struct {
		bucket, version int64
		keySum          [md5.Size]byte
		key             ObjectKey
	}
	var entries []entry
	if only == nil {
		entries = make([]entry, 0, len(idx.rows))
	}
	var buf []byte
	for k, st := range idx.rows {
		b := bucketOf(st.Version, width)
		if only != nil && !only[b] {
			continue
		}
		buf = append(append(append(buf[:0], k.Namespace...), '/'), k.Name...)
		entries = append(entries, entry{b, st.Version, md5.Sum(buf), k})
	}
	// The hex digits of the key's MD5 sort as its bytes do.
	slices.SortFunc(entries, func(x, y entry) int {
		return cmp.Or(cmp.Compare(x.bucket, y.bucket), cmp.Compare(x.version, y.version), bytes.Compare(x.keySum[:], y.keySum[:]))
	})
	out := map[int64]string{}
	h := md5.New()
	var st RowState // one, not one per row: line's pointer escapes
	for i, e := range entries {
		if i > 0 && e.bucket == entries[i-1].bucket {
			h.Write(comma)
		}
		st = idx.rows[e.key]
		buf = line(buf[:0], e.key, &st)
		h.Write(buf)
		if i == len(entries)-1 || entries[i+1].bucket != e.bucket {
			out[e.bucket] = hex.EncodeToString(h.Sum(buf[:0]))
			h.Reset()
		}
	}
	return out
}

var comma = []byte{','}

// refresh brings the index in line with the table, whose version counter
// is at maxVersion: it compares the buckets' digests and reads the states
// of the rows of the buckets that differ. It returns how many buckets
// differed. Rows written meanwhile may be missed or seen half: the next
// refresh finds them.
func (idx *rowIndex) refresh(ctx context.Context, store *Store, maxVersion int64) (int, error) {
	var local map[int64]string
	width := bucketWidth(maxVersion)
	// The database computes its digests while this computes the index's.
	remote, err := concurrently(func() (map[int64]string, error) { return store.Digests(ctx, width) },
		func() { local = idx.digests(width) })
	if err != nil {
		return 0, err
	}
	return idx.update(ctx, store, width, remote, local)
}

// refreshAt is refresh against the database's digests read ahead
// (digestsAhead), or, when db is nil, against its version and digests read
// now. It returns the version counter it refreshed against. What was pulled
// or written after db was read only makes the buckets it touched differ,
// and those are read now.
func (idx *rowIndex) refreshAt(ctx context.Context, store *Store, db *dbDigests) (maxVersion int64, buckets int, err error) {
	if db == nil {
		if maxVersion, err = store.MaxVersion(ctx); err != nil {
			return 0, 0, fmt.Errorf("read the database's version: %w", err)
		}
		buckets, err = idx.refresh(ctx, store, maxVersion)
		return maxVersion, buckets, err
	}
	if db.err != nil {
		return 0, 0, db.err
	}
	width := bucketWidth(db.maxVersion)
	local := db.local
	if local == nil {
		local = idx.digests(width)
	}
	buckets, err = idx.update(ctx, store, width, db.sums, local)
	return db.maxVersion, buckets, err
}

// dbDigests is what digestsAhead reads for a refresh: the database's
// version counter and the digests of its buckets at that counter's width,
// and the index's digests at that width as they were when the read began
// (local; nil to compute them at the refresh).
type dbDigests struct {
	maxVersion int64
	sums       map[int64]string
	local      map[int64]string
	err        error
}

// digestsAhead reads the database's digests in a goroutine of its own, so
// that a loop goes on pulling or writing while the database hashes every
// row's header (about 200 ms at 100,000 rows); the full pass that uses
// them waits for no such query. The index's own digests are taken now, at
// the width of its last refresh (only the buckets changed since are
// computed). They are older than the index by the time the pass uses them,
// which is harmless: what the loop wrote or pulled since is in the index
// and in the table alike, so a bucket it touched either still agrees (the
// index holds what the table does) or differs and is read again, as a
// bucket written after the database's digests is; anything else the next
// pass shows. When the database's counter has moved the width, the pass
// computes the index's digests at the new width itself.
func digestsAhead(ctx context.Context, store *Store, idx *rowIndex) <-chan dbDigests {
	width := idx.width
	var local map[int64]string
	if width > 0 {
		local = idx.digests(width)
	}
	ch := make(chan dbDigests, 1)
	go func() {
		db := dbDigests{local: local}
		if db.maxVersion, db.err = store.MaxVersion(ctx); db.err != nil {
			db.err = fmt.Errorf("read the database's version: %w", db.err)
		} else {
			if w := bucketWidth(db.maxVersion); w != width {
				width, db.local = w, nil
			}
			db.sums, db.err = store.Digests(ctx, width)
		}
		ch <- db
	}()
	return ch
}

// update reads the rows of the buckets whose digests differ between remote
// (the database's) and local (the index's) into the index.
func (idx *rowIndex) update(ctx context.Context, store *Store, width int64, remote, local map[int64]string) (int, error) {
	var differ []int64
	for b, sum := range remote {
		if local[b] != sum {
			differ = append(differ, b)
		}
	}
	for b := range local {
		if _, ok := remote[b]; !ok {
			differ = append(differ, b)
		}
	}
	if len(differ) == 0 {
		return 0, nil
	}
	states, err := store.StatesIn(ctx, differ, width)
	if err != nil {
		return 0, err
	}
	stale := map[int64]bool{}
	for _, b := range differ {
		stale[b] = true
	}
	old := map[ObjectKey]RowState{}
	for k, st := range idx.rows {
		if stale[bucketOf(st.Version, width)] {
			old[k] = st
			idx.remove(k)
		}
	}
	for k, st := range states {
		// What the leader learnt of a row (its ciphertext's MD5, damage)
		// holds while what the row says is unchanged.
		if o, ok := old[k]; ok && sameHeader(&o, &st) {
			st.Sealed, st.SealedKnown, st.Damaged = o.Sealed, o.SealedKnown, o.Damaged
		}
		idx.set(k, st)
	}
	return len(differ), nil
}

// sameHeader reports whether two states of a row say the same.
func sameHeader(a, b *RowState) bool {
	return a.Version == b.Version && a.Tombstone == b.Tombstone && a.KeyID == b.KeyID && a.SourceCluster == b.SourceCluster && bytes.Equal(a.Hash, b.Hash)
}

// record puts what a pulled row says in the index.
func (idx *rowIndex) record(r *Row) {
	idx.set(r.ObjectKey, RowState{Hash: r.Hash, Tombstone: r.Tombstone, SourceCluster: r.SourceCluster, KeyID: r.KeyID, Version: r.Version, Size: r.Size})
}

// headerRow is the row, without its ciphertext, that the index knows as
// key's.
func headerRow(k ObjectKey, st *RowState) Row {
	return Row{ObjectKey: k, KeyID: st.KeyID, Hash: st.Hash, Tombstone: st.Tombstone, Version: st.Version, SourceCluster: st.SourceCluster, Size: st.Size}
}

// load reads the whole table's row states into a fresh index (the first
// refresh reads every bucket).
func loadIndex(ctx context.Context, store *Store) (*rowIndex, error) {
	idx := newRowIndex()
	_, _, err := idx.refreshAt(ctx, store, nil)
	return idx, err
}

// concurrently runs query in a goroutine of its own while it runs work,
// and returns query's result once both are done.
func concurrently[T any](query func() (T, error), work func()) (T, error) {
	var v T
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		v, err = query()
	}()
	work()
	<-done
	return v, err
}
