package main

// The writer claim (kss_writer, migration 0002): the database decides the
// one leader that writes. Portable SQL only: one row, a conditional UPDATE
// to take it, the database's clock for its expiry. failover.go holds,
// renews and waits for it.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Claim is a held writer claim: the holder (a CLUSTER_NAME) and the epoch,
// which every taking of the claim increments.
type Claim struct {
	Holder string
	Epoch  int64
}

// ClaimState is the claim as stored, with the database's clock.
type ClaimState struct {
	Claim
	ExpiresAt time.Time
	Now       time.Time // the database's now()
}

// Free reports whether the claim may be taken: released, or expired by the
// database's clock.
func (c ClaimState) Free() bool { return c.Holder == "" || !c.ExpiresAt.After(c.Now) }

// errFenced: the claim is held by another holder or epoch, so this writer
// may not write. Not retryable.
var errFenced = errors.New("fenced: this leader no longer holds the writer claim")

// takeClaimSQL takes the claim for $1 when it is free, or, with $3, when
// $1 holds it already (a restart, or the next replica of the same cluster
// after a Lease handover). The new epoch fences the previous holder out.
const takeClaimSQL = `
UPDATE kss_writer
SET holder = $1, epoch = epoch + 1, expires_at = now() + $2::FLOAT8 * INTERVAL '1 second'
WHERE id = 1 AND (holder = '' OR expires_at <= now() OR ($3 AND holder = $1))
RETURNING epoch`

const renewClaimSQL = `
UPDATE kss_writer
SET expires_at = now() + $3::FLOAT8 * INTERVAL '1 second'
WHERE id = 1 AND holder = $1 AND epoch = $2
RETURNING epoch`

const releaseClaimSQL = `
UPDATE kss_writer SET holder = '', expires_at = now()
WHERE id = 1 AND holder = $1 AND epoch = $2
RETURNING epoch`

// fenceSQL is the first statement of every writing transaction. The
// transaction is serializable, so if the claim is taken over after this
// read, the transaction either commits before every write of the new
// epoch (version order) or fails on the version counter and, retried,
// reads the new holder here.
const fenceSQL = `SELECT epoch FROM kss_writer WHERE id = 1 AND holder = $1 AND epoch = $2`

// TakeClaim takes the claim for holder for ttl, if it is free, or, with
// retake, already holder's. ok is false when it is held.
func (s *Store) TakeClaim(ctx context.Context, holder string, ttl time.Duration, retake bool) (c Claim, ok bool, err error) {
	c.Epoch, err = s.updateClaim(ctx, takeClaimSQL, holder, ttl.Seconds(), retake)
	if errors.Is(err, pgx.ErrNoRows) {
		return Claim{}, false, nil
	}
	if err != nil {
		return Claim{}, false, fmt.Errorf("take the writer claim: %w", err)
	}
	c.Holder = holder
	return c, true, nil
}

// RenewClaim extends c by ttl from the database's now, or returns
// errFenced if c is no longer held.
func (s *Store) RenewClaim(ctx context.Context, c Claim, ttl time.Duration) error {
	_, err := s.updateClaim(ctx, renewClaimSQL, c.Holder, c.Epoch, ttl.Seconds())
	if errors.Is(err, pgx.ErrNoRows) {
		return errFenced
	}
	if err != nil {
		return fmt.Errorf("renew the writer claim: %w", err)
	}
	return nil
}

// ReleaseClaim gives c up, so that a standby may take it at once. Releasing
// a claim no longer held does nothing.
func (s *Store) ReleaseClaim(ctx context.Context, c Claim) error {
	_, err := s.updateClaim(ctx, releaseClaimSQL, c.Holder, c.Epoch)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("release the writer claim: %w", err)
	}
	return nil
}

// updateClaim runs one of the claim's UPDATE … RETURNING epoch statements,
// one round trip: a single statement is a transaction of its own, and its
// condition is checked on the row it locks (on PostgreSQL, under READ
// COMMITTED, on the row's latest version), so two leaders never both take
// the claim. pgx.ErrNoRows says the condition did not hold.
func (s *Store) updateClaim(ctx context.Context, sql string, args ...any) (epoch int64, err error) {
	err = s.retrying(ctx, func() error { return s.pool.QueryRow(ctx, sql, args...).Scan(&epoch) })
	return epoch, err
}

// ReadClaim returns the claim as stored.
func (s *Store) ReadClaim(ctx context.Context) (ClaimState, error) {
	var c ClaimState
	err := s.pool.QueryRow(ctx, `SELECT holder, epoch, expires_at, now() FROM kss_writer WHERE id = 1`).
		Scan(&c.Holder, &c.Epoch, &c.ExpiresAt, &c.Now)
	if err != nil {
		return ClaimState{}, fmt.Errorf("read the writer claim: %w", err)
	}
	return c, nil
}

// fenceResult is the outcome of scanning fenceSQL's row: errFenced when
// the claim is no longer held (no row).
func fenceResult(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return errFenced
	}
	if err != nil {
		return fmt.Errorf("check the writer claim: %w", err)
	}
	return nil
}
