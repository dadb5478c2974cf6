package main

// The leader's verification of the rows it answers for. Its full pass
// compares row headers (hash, tombstone flag, key id, version, source),
// which a database writer can leave intact while changing what followers
// act on: the ciphertext. So the leader opens each row it answers for once,
// as a follower would, and from then on has the database hash the
// ciphertexts (MD5, in bucket digests like the headers' of digest.go) and
// compares the hashes with those of what it wrote or verified, without
// reading a ciphertext again unless its hash changed. A row that does not
// say what the leader wrote is marked damaged and rewritten: by the same
// pass when its hash changed, by the incremental pass right after the
// verification when it is opened the first time (which runs beside the
// loop, startChecks).

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/sirupsen/logrus"
)

// What one full pass verifies. Opening: the rows not verified yet (after a
// start, or since their headers changed), at most verifyPassRows and
// verifyPassBytes of ciphertext read, verifyBatchBytes at a time. Hashing:
// the next buckets after the previous pass's, up to sealPassBytes of
// ciphertext for the database to hash. A table of N rows and B bytes is
// opened once within max(⌈N/verifyPassRows⌉, ⌈B/verifyPassBytes⌉) passes
// of a start, and after that a ciphertext changed behind the leader's back
// is found within ⌈B/sealPassBytes⌉ passes and rewritten in the same pass.
// A pass does not start opening rows while the last pass's are still being
// opened.
const (
	verifyPassRows   = 5000
	verifyPassBytes  = 16 << 20
	verifyBatchBytes = 4 << 20
	sealPassBytes    = 16 << 20
)

// verifyRow reports whether r is what a leader holding keys wrote: it opens
// (bound to its namespace, name, version, key id and source cluster, with
// a tombstone column that agrees), and its hash column is the keyed hash
// of what it holds. The errors are those of openRow, so rejectReason
// classifies them.
func verifyRow(keys *Keyring, r *Row) error {
	p, err := openRow(keys, r)
	if err != nil {
		return err
	}
	if h, _ := keys.HashFor(r.KeyID, r.Namespace, r.Name, p); !hmac.Equal(h, r.Hash) {
		return fmt.Errorf("%w: hash column disagrees with the sealed payload", ErrAuth)
	}
	return nil
}

// answers reports whether the leader answers for the row of key: a row of
// a Secret it syncs, whatever cluster the row names, or a row written under
// its name.
func (l *leaderLoop) answers(key ObjectKey, st *RowState) bool {
	return st.SourceCluster == l.cfg.ClusterName || l.source(key) != nil
}

// verify opens the rows not verified yet, then compares the ciphertexts'
// hashes of the next buckets (see the constants), and marks the damaged
// rows in l.known, so that this pass rewrites them. maxVersion is the
// counter the index was refreshed at.
func (l *leaderLoop) verify(ctx context.Context, maxVersion int64) error {
	width := bucketWidth(maxVersion)
	var todo []ObjectKey
	buckets := map[int64]*sealBucket{}
	for k, st := range l.known.rows {
		answers := l.answers(k, &st)
		// A row found damaged is not opened again: this pass rewrites it,
		// and until then it stays marked (and reported once).
		if answers && !st.SealedKnown && !st.Damaged {
			todo = append(todo, k)
		}
		b := bucketOf(st.Version, width)
		if buckets[b] == nil {
			buckets[b] = &sealBucket{known: true}
		}
		buckets[b].size += st.Size
		buckets[b].known = buckets[b].known && (st.SealedKnown || !answers)
	}
	if err := l.open(ctx, todo); err != nil {
		return err
	}
	return l.compareSeals(ctx, width, buckets)
}

// sealBucket is what compareSeals needs to know of a bucket: the size of
// its ciphertexts, and whether the leader knows the hash of each row it
// answers for.
type sealBucket struct {
	size  int64
	known bool
}

// open starts reading and opening the next of todo, the rows the leader
// answers for whose ciphertext it has not verified, in key order after the
// last pass's (startChecks), unless the last pass's are still being read.
func (l *leaderLoop) open(ctx context.Context, todo []ObjectKey) error {
	l.metrics.unverified.Set(float64(len(todo)))
	if len(todo) == 0 || l.checking {
		return nil
	}
	slices.SortFunc(todo, func(a, b ObjectKey) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	// Start after the last pass's, and wrap round.
	i, _ := slices.BinarySearchFunc(todo, l.verifyAfter, func(a, b ObjectKey) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	todo = append(todo[i:], todo[:i]...)
	var rows []*Row
	var bytes int64
	for _, k := range todo {
		if len(rows) == verifyPassRows || bytes >= verifyPassBytes {
			break
		}
		st := l.known.rows[k]
		row := headerRow(k, &st)
		r := &row
		l.verifyAfter = k
		if r.Size > MaxCiphertextSize {
			// No correct writer makes one, and it is never transferred:
			// verifyRow refuses it by its size alone.
			l.damaged(r, verifyRow(l.keys, r))
			continue
		}
		bytes += r.Size
		rows = append(rows, r)
	}
	l.startChecks(ctx, rows)
	return nil
}

// rowCheck is the verification of one row as read: the MD5 of a ciphertext
// that says what the leader wrote, or why it does not.
type rowCheck struct {
	row *Row // the header; its ciphertext is dropped once checked
	sum [md5.Size]byte
	err error
}

// rowChecks are the checks of one batch of rows, or the error that stopped
// reading them (the rows checked before it are kept).
type rowChecks struct {
	checks []rowCheck
	err    error
}

// checkRows reads the ciphertexts of rows (headers), a few MiB at a time,
// and verifies each. It touches nothing of the loop's, so it may run
// beside it. A row rewritten since its header was read has no ciphertext
// and is left out: the next refresh brings its new header.
func checkRows(ctx context.Context, store *Store, keys *Keyring, rows []*Row) rowChecks {
	var out rowChecks
	for _, batch := range byteBatches(rows, verifyBatchBytes) {
		if out.err = store.FillCiphertexts(ctx, batch); out.err != nil {
			return out
		}
		for _, r := range batch {
			if r.Ciphertext == nil {
				continue
			}
			c := rowCheck{row: r, err: verifyRow(keys, r)}
			if c.err == nil {
				c.sum = md5.Sum(r.Ciphertext)
			}
			r.Ciphertext = nil
			out.checks = append(out.checks, c)
		}
	}
	return out
}

// startChecks verifies rows in a goroutine of its own, which hands the
// result to the loop (l.checks, then applyChecks): opening 5,000 rows
// (reading 16 MiB and decrypting them) took a pass a second at
// N = 100,000 on a busy machine, and a change waited for it on every pass
// until each row was verified after a start (19 passes).
func (l *leaderLoop) startChecks(ctx context.Context, rows []*Row) {
	if len(rows) == 0 {
		return
	}
	// Not the pass's context, which ends with the pass; a pass called
	// outside run (tests, benchmarks) lends its own.
	if l.loopCtx != nil {
		ctx = l.loopCtx
	}
	l.checking = true
	go func() { l.checks <- checkRows(ctx, l.store, l.keys, rows) }()
}

// applyChecks records checks on the loop: the hash of each row that says
// what the leader wrote, and the others damaged, to be rewritten by the
// next pass (they are marked dirty). A row whose version moved since it
// was read is only reported if it was damaged; the next refresh and
// verification see its new version. It returns how many rows verified.
func (l *leaderLoop) applyChecks(c rowChecks) (verified int) {
	for _, ch := range c.checks {
		st, ok := l.known.rows[ch.row.ObjectKey]
		current := ok && st.Version == ch.row.Version
		switch {
		case ch.err != nil && current:
			l.damaged(ch.row, ch.err)
			l.markDirty(ch.row.ObjectKey)
		case ch.err != nil:
			// Rewritten meanwhile (its header was damaged too, say), but
			// the damage is still worth saying.
			l.reportDamage(ch.row, ch.err)
		case current:
			l.sealed(ch.row.ObjectKey, ch.row.Version, ch.sum)
			verified++
		}
	}
	return verified
}

// sealed records that the row of key at version holds a ciphertext of MD5
// sum that says what the leader wrote.
func (l *leaderLoop) sealed(key ObjectKey, version int64, sum [md5.Size]byte) {
	if st, ok := l.known.rows[key]; ok && st.Version == version {
		st.Sealed, st.SealedKnown = sum, true
		l.known.set(key, st)
	}
}

// compareSeals has the database hash the ciphertexts of the next buckets
// where the leader knows the hash of every row it answers for, and
// compares: in a bucket that differs, each row whose hash changed is
// opened now. The hash of a row the leader does not answer for is only
// recorded.
func (l *leaderLoop) compareSeals(ctx context.Context, width int64, buckets map[int64]*sealBucket) error {
	ids := slices.Sorted(func(yield func(int64) bool) {
		for id, b := range buckets {
			if b.known && !yield(id) {
				return
			}
		}
	})
	if len(ids) == 0 {
		return nil
	}
	i, _ := slices.BinarySearch(ids, l.sealAfter+1)
	ids = append(ids[i:], ids[:i]...)
	var next []int64
	var size int64
	for _, id := range ids {
		if len(next) > 0 && size+buckets[id].size > sealPassBytes {
			break
		}
		next = append(next, id)
		size += buckets[id].size
	}
	l.sealAfter = next[len(next)-1]
	var local map[int64]string
	remote, err := concurrently(func() (map[int64]string, error) { return l.store.SealDigests(ctx, next, width) },
		func() { local = l.known.sealDigests(width, next) })
	if err != nil {
		return err
	}
	var differ []int64
	for _, id := range next {
		if remote[id] != local[id] {
			differ = append(differ, id)
		}
	}
	if len(differ) == 0 {
		return nil
	}
	seals, err := l.store.SealsIn(ctx, differ, width)
	if err != nil {
		return err
	}
	var todo []*Row
	for _, s := range seals {
		st, ok := l.known.rows[s.key]
		if !ok || st.Version != s.version || st.Sealed == s.sum {
			continue // a header changed meanwhile: the next refresh brings it
		}
		if !l.answers(s.key, &st) {
			l.sealed(s.key, s.version, s.sum)
			continue
		}
		st.SealedKnown = false
		l.known.set(s.key, st)
		r := headerRow(s.key, &st)
		todo = append(todo, &r)
	}
	// Few rows, if any (ciphertexts changed behind the leader's back): on
	// the loop, so that this pass rewrites the damaged ones.
	checks := checkRows(ctx, l.store, l.keys, todo)
	l.applyChecks(checks)
	return checks.err
}

// rowSeal is the MD5 of a row's ciphertext, as the database computes it.
type rowSeal struct {
	key     ObjectKey
	version int64
	sum     [md5.Size]byte
}

// sealDigestSQL is digestSQL over the ciphertexts' MD5s, for the buckets
// in $2 only: the database reads and hashes those ciphertexts, and sends
// one digest per bucket.
const sealDigestSQL = `
SELECT bucket, md5(string_agg(sum, ',' ORDER BY version, key_sum))
FROM (
    SELECT s.version - s.version % $1 AS bucket, s.version, md5(s.namespace || '/' || s.name) AS key_sum, md5(s.ciphertext) AS sum
    FROM kss_secrets AS s JOIN unnest($2::BIGINT[]) AS b (lo) ON s.version >= b.lo AND s.version < b.lo + $1
) AS r
GROUP BY bucket`

// SealDigests returns, for each of buckets (of width versions) that holds
// rows, the digest of its rows' ciphertexts' MD5s.
func (s *Store) SealDigests(ctx context.Context, buckets []int64, width int64) (map[int64]string, error) {
	return s.bucketSums(ctx, "read ciphertext digests", sealDigestSQL, width, buckets)
}

// SealsIn returns the MD5 of the ciphertext of each row in buckets.
func (s *Store) SealsIn(ctx context.Context, buckets []int64, width int64) ([]rowSeal, error) {
	rows, err := s.pool.Query(ctx, `
SELECT s.namespace, s.name, s.version, md5(s.ciphertext)
FROM kss_secrets AS s JOIN unnest($1::BIGINT[]) AS b (lo) ON s.version >= b.lo AND s.version < b.lo + $2`, buckets, width)
	if err != nil {
		return nil, fmt.Errorf("read ciphertext hashes: %w", err)
	}
	var out []rowSeal
	var r rowSeal
	var sum string
	_, err = pgx.ForEachRow(rows, []any{&r.key.Namespace, &r.key.Name, &r.version, &sum}, func() error {
		if n, err := hex.Decode(r.sum[:], []byte(sum)); err != nil || n != md5.Size {
			return fmt.Errorf("MD5 %q of %s: not 32 hex digits", sum, r.key)
		}
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read ciphertext hashes: %w", err)
	}
	return out, nil
}

// damaged reports a row that does not say what this leader wrote and
// marks it for rewriting.
func (l *leaderLoop) damaged(r *Row, err error) {
	st, ok := l.known.rows[r.ObjectKey]
	if !ok {
		return // written since the states were read
	}
	st.Damaged = true
	l.known.set(r.ObjectKey, st)
	l.reportDamage(r, err)
}

// reportDamage reports the row r as found damaged (log, metric).
func (l *leaderLoop) reportDamage(r *Row, err error) {
	reason := rejectReason(err)
	l.metrics.rowErrors.WithLabelValues(reason).Inc()
	l.log.WithFields(logrus.Fields{"namespace": r.Namespace, "name": r.Name, "version": r.Version, "reason": reason}).WithError(err).
		Error("row damaged in the database: rewriting it")
}
