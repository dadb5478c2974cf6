package main

// Key rotation: the rotate-key subcommand (a fresh key comes from keygen,
// crypto.go's generateKey). The procedure it serves (README, "Rotating the
// encryption key"):
//
//  1. Add the new key to PREVIOUS_ENCRYPTION_KEYS everywhere: every cluster
//     can now open rows under either key, and nothing else changes.
//  2. Switch: make the new key ENCRYPTION_KEY and the old one a previous key,
//     followers first, the leader last. From its first full pass on, the
//     leader rewrites its rows under the new key (their keyed hashes all
//     differ).
//  3. Rotate: `kube-secret-sync rotate-key` rewrites every row still under
//     another key (tombstones and other leaders' rows included) and exits 0
//     only when none is left.
//  4. Drop the old key from PREVIOUS_ENCRYPTION_KEYS everywhere.

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"

	"github.com/sirupsen/logrus"
)

// rotatePage is how many rows one re-encrypting transaction rewrites.
const rotatePage = writeChunk

// rotateResult counts what a rotation did.
type rotateResult struct {
	Rotated int // rewritten under the current key
	Skipped int // could not be opened with any key in the ring: left as they are
	Moved   int // changed by someone else while being rotated: left to their writer
}

// rotateKeys rewrites every row that is not under the current key. Each row
// is opened with the key its key id names and sealed again under the
// current key for a new version, unchanged otherwise: same payload (and so
// the same update time on the followers), same source cluster, same
// tombstone flag. A row that does not open is reported and left alone,
// never deleted: it may be the only copy of a Secret under a key that this
// process was not given.
func rotateKeys(ctx context.Context, store *Store, keys *Keyring, rand io.Reader, log *logrus.Entry) (rotateResult, error) {
	var res rotateResult
	var after ObjectKey
	for {
		rows, err := store.RowsNotUnder(ctx, keys.ID(), after, rotatePage)
		if err != nil {
			return res, err
		}
		if len(rows) == 0 {
			return res, nil
		}
		after = rows[len(rows)-1].ObjectKey
		payloads := make(map[ObjectKey]*Payload, len(rows))
		var todo []Row
		for i := range rows {
			r := &rows[i]
			p, err := openRow(keys, r)
			if err != nil {
				res.Skipped++
				log.WithFields(logrus.Fields{"namespace": r.Namespace, "name": r.Name, "version": r.Version, "reason": rejectReason(err)}).
					WithError(err).Error("row left as it is: cannot open it")
				continue
			}
			payloads[r.ObjectKey] = p
			todo = append(todo, *r)
		}
		if len(todo) == 0 {
			continue
		}
		reseal := func(version int64, r *Row) ([]byte, []byte, error) {
			p := payloads[r.ObjectKey]
			b := Binding{Namespace: r.Namespace, Name: r.Name, Version: version, SourceCluster: r.SourceCluster}
			ct, err := keys.Seal(rand, b, p)
			return ct, keys.Hash(r.Namespace, r.Name, p), err
		}
		n, err := store.Reseal(ctx, keys.ID(), todo, reseal)
		if err != nil {
			return res, err
		}
		res.Rotated += n
		res.Moved += len(todo) - n
		log.WithFields(logrus.Fields{"rows": n, "through": after.String()}).Info("re-encrypted under the current key")
	}
}

// errRowsLeft makes rotate-key exit non-zero while rows remain under
// another key, so that a script does not drop the old key too early.
var errRowsLeft = errors.New("rows remain under another key")

// runRotateKey is the rotate-key subcommand: one rotation pass over the
// whole table with the daemon's configuration (DSN, ENCRYPTION_KEY,
// PREVIOUS_ENCRYPTION_KEYS). It needs the leader's database grants.
func runRotateKey(ctx context.Context, cfg *Config, log *logrus.Entry) error {
	store, err := OpenStore(ctx, cfg.DSN)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Migrate(ctx, cfg.PodName); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	keys, err := cfg.keyring()
	if err != nil {
		return err
	}
	res, err := rotateKeys(ctx, store, keys, crand.Reader, log)
	if err != nil {
		return err
	}
	log.WithFields(logrus.Fields{
		"key_id": keys.ID(), "rotated": res.Rotated, "unreadable": res.Skipped, "changed_meanwhile": res.Moved,
	}).Info("rotation pass done")
	// Rows changed meanwhile were written by a leader under its current
	// key; count what is really left.
	left, err := store.RowsNotUnder(ctx, keys.ID(), ObjectKey{}, 1)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("%w (for example %s, key id %q): run rotate-key again, or see the errors above", errRowsLeft, left[0].ObjectKey, capKeyID(left[0].KeyID))
	}
	return nil
}
