package main

// The leader's verification of the rows it owns. Its full pass compares
// row states (hash, tombstone flag, key id), which a database writer can
// leave intact while changing what followers act on: the ciphertext, the
// version, the source cluster. So every full pass also reads a slice of
// the table, opens the rows this leader owns as a follower would, and
// rewrites the ones that do not say what it wrote.

import (
	"context"
	"crypto/hmac"
	"fmt"

	"github.com/sirupsen/logrus"
)

// What one full pass verifies, and how much of it is held at once. A full
// table of N rows totalling B bytes of ciphertext is verified once every
// max(⌈N/verifyPassRows⌉, ⌈B/verifyPassBytes⌉) full passes, so a damaged
// row is rewritten within that many ticks plus one.
const (
	verifyPassRows   = 1000
	verifyPassBytes  = 16 << 20
	verifyBatchBytes = 4 << 20
	verifyPage       = 500
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

// owns reports whether the leader answers for r: a row of a Secret it
// syncs, whatever cluster the row names, or a row written under its name.
func (l *leaderLoop) owns(r *Row) bool {
	return r.SourceCluster == l.cfg.ClusterName || l.source(r.ObjectKey) != nil
}

// verify checks the next slice of the table, at most verifyPassRows rows
// and verifyPassBytes of ciphertext, after where the previous pass
// stopped, and marks the damaged rows it owns in l.known, so that this
// pass rewrites them. At the end of the table it starts over.
func (l *leaderLoop) verify(ctx context.Context) error {
	rowsLeft, bytesLeft := verifyPassRows, int64(verifyPassBytes)
	for rowsLeft > 0 && bytesLeft > 0 {
		limit := min(verifyPage, rowsLeft)
		rows, err := l.store.Headers(ctx, l.verifyAfter, limit)
		if err != nil {
			return err
		}
		var todo []*Row
		for i := range rows {
			if bytesLeft <= 0 {
				break
			}
			r := &rows[i]
			l.verifyAfter = r.ObjectKey
			rowsLeft--
			switch {
			case !l.owns(r):
			case r.Size > MaxCiphertextSize:
				// No correct writer makes one, and it is never transferred:
				// verifyRow refuses it by its size alone.
				l.damaged(r, verifyRow(l.keys, r))
			default:
				bytesLeft -= r.Size
				todo = append(todo, r)
			}
		}
		for _, batch := range byteBatches(todo, verifyBatchBytes) {
			if err := l.store.FillCiphertexts(ctx, batch); err != nil {
				return err
			}
			for _, r := range batch {
				// Without a ciphertext the row was rewritten since it was
				// read: it is verified next time round.
				if r.Ciphertext != nil {
					if err := verifyRow(l.keys, r); err != nil {
						l.damaged(r, err)
					}
				}
				r.Ciphertext = nil
			}
		}
		if len(rows) < limit {
			l.verifyAfter = ObjectKey{} // the end of the table: start over next pass
			break
		}
	}
	return nil
}

// damaged reports a row that does not say what this leader wrote and
// marks it for rewriting.
func (l *leaderLoop) damaged(r *Row, err error) {
	st, ok := l.known[r.ObjectKey]
	if !ok {
		return // written since the states were read
	}
	st.Damaged = true
	l.known[r.ObjectKey] = st
	reason := rejectReason(err)
	l.metrics.rowErrors.WithLabelValues(reason).Inc()
	l.log.WithFields(logrus.Fields{"namespace": r.Namespace, "name": r.Name, "version": r.Version, "reason": reason}).WithError(err).
		Error("row damaged in the database: rewriting it")
}
