package main

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store is the shared database: one row per synced Secret plus the version
// counter. All SQL here is common to PostgreSQL and CockroachDB (SPEC §4).
type Store struct {
	pool *pgxpool.Pool
	// maxRetries bounds whole-transaction retries on serialization
	// failures and deadlocks.
	maxRetries int
}

// ObjectKey names a Secret.
type ObjectKey struct{ Namespace, Name string }

func (k ObjectKey) String() string { return k.Namespace + "/" + k.Name }

// Row is one stored Secret as read by a follower.
type Row struct {
	ObjectKey
	Ciphertext    []byte
	KeyID         string
	Hash          []byte
	Tombstone     bool
	Version       int64
	SourceCluster string
	UpdatedAt     time.Time
	// Size is the ciphertext's length in bytes as the database reports it.
	// Queries that return headers only (no ciphertext) fill it, so that a
	// ciphertext is never transferred before its size is known.
	Size int64
}

// Binding is what the row's ciphertext must be bound to.
func (r *Row) Binding() Binding {
	return Binding{Namespace: r.Namespace, Name: r.Name, Version: r.Version, SourceCluster: r.SourceCluster}
}

// RowState is what the leader needs to know of a stored row to decide
// whether a Secret changed: no ciphertext is read.
type RowState struct {
	Hash          []byte
	Tombstone     bool
	SourceCluster string
	KeyID         string
	Version       int64
	// Damaged is set by the leader's verification: the row does not say
	// what the leader wrote, and must be rewritten whatever its hash says.
	Damaged bool
	// Size is the ciphertext's length where read (StatesIn) or written.
	Size int64
	// Sealed is the MD5 of the row's ciphertext, where SealedKnown: as the
	// leader wrote or verified it, or, for a row it does not answer for,
	// read (verify.go). Followers leave it unset.
	Sealed      [md5.Size]byte
	SealedKnown bool
}

// Change is one row the leader writes: a Secret's new content or its
// tombstone.
type Change struct {
	ObjectKey
	Hash    []byte
	Payload *Payload
	// Force rewrites the row even where its stored hash, tombstone flag
	// and key id already equal the change's (a damaged row).
	Force bool
	// Stripped: Payload has no data yet (the Secret is cached without it)
	// and Size estimates its sealed size; the leader fetches it before
	// sealing.
	Stripped bool
	Size     int
	// HashedAt is, for a Stripped change, the resourceVersion of the
	// Secret whose content Hash is ("" if Hash is not known): a live
	// Secret still at that version needs no hashing again.
	HashedAt string
	// Version is set by Store.Write: the version the row was written at.
	Version int64
	// Sealed and SealedSize are the MD5 and length of the ciphertext
	// written, set by the leader's SealFunc.
	Sealed     [md5.Size]byte
	SealedSize int64
}

// SealFunc encrypts a change once its transaction's version is known.
type SealFunc func(version int64, c *Change) ([]byte, error)

// Cursor is a follower's position in the (version, namespace, name) order.
type Cursor struct {
	Version   int64
	Namespace string
	Name      string
}

// writeChunk bounds the rows of one upsert statement (and transaction):
// few transactions, each two round trips, to a database in another region
// (an initial sync of 10,000 Secrets writes five), yet a CockroachDB
// transaction well under its size limits (writeChunkBytes bounds it too).
const writeChunk = 2000

// writeChunkBytes bounds the ciphertext of one write transaction.
const writeChunkBytes = 8 << 20

// OpenStore creates a connection pool for dsn. The pool connects lazily:
// the first query (Migrate, at start) tells whether the database answers.
func OpenStore(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("parse DSN: invalid connection string")
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.RuntimeParams["application_name"] = "kube-secret-sync"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return &Store{pool: pool, maxRetries: 10}, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// retryable reports whether a transaction failed only because it lost a
// race with another one (SQLSTATE 40001 serialization failure, 40P01
// deadlock) and should be run again from the start.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

// inTx runs fn in a SERIALIZABLE transaction and retries the whole
// transaction on serialization failures. It deliberately does not use
// savepoint-based retries (cockroach-go's ExecuteTx): on PostgreSQL their
// commit is a RELEASE SAVEPOINT that can report success for a rolled-back
// write.
func (s *Store) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return s.retrying(ctx, func() error {
		return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.Serializable}, fn)
	})
}

// retrying runs tx, a whole transaction, again while it fails with a
// serialization failure, up to maxRetries times, with jittered backoff.
func (s *Store) retrying(ctx context.Context, tx func() error) error {
	backoff := 10 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := tx()
		if err == nil || !retryable(err) || attempt >= s.maxRetries {
			return err
		}
		// Full jitter keeps competing writers from retrying in lock step.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(rand.N(backoff) + time.Millisecond):
		}
		backoff = min(2*backoff, time.Second)
	}
}

const upsertSQL = `
INSERT INTO kss_secrets (namespace, name, ciphertext, key_id, hash, tombstone, version, source_cluster, writer_epoch, created_at, updated_at)
SELECT u.namespace, u.name, substring($11::BYTEA FROM u.start FOR u.length), $4, u.hash, u.tombstone, $6, $7, $9, now(), now()
FROM unnest($1::TEXT[], $2::TEXT[], $3::INT4[], $10::INT4[], $5::BYTEA[], $8::BOOL[]) AS u (namespace, name, start, length, hash, tombstone)
ON CONFLICT (namespace, name) DO UPDATE SET
    ciphertext = excluded.ciphertext,
    key_id = excluded.key_id,
    hash = excluded.hash,
    tombstone = excluded.tombstone,
    version = excluded.version,
    source_cluster = excluded.source_cluster,
    writer_epoch = excluded.writer_epoch,
    updated_at = excluded.updated_at`

// bumpVersionSQL takes the version of a writing transaction: above the
// counter and above every row, so that a counter set back (by a writer, or
// by restoring kss_version alone) never makes a new row look older than a
// copy. Row versions from versionCeiling up are ignored: no correct writer
// gets there, and a forged one must not push the counter to overflow.
const bumpVersionSQL = `
UPDATE kss_version
SET version = GREATEST(version, (SELECT COALESCE(max(version), 0) FROM kss_secrets WHERE version < $1)) + 1
WHERE id = 1
RETURNING version`

// versionCeiling is 2^62.
const versionCeiling int64 = 1 << 62

// upsertChangedSQL leaves a row alone whose stored hash, tombstone flag and
// key id already equal the change's; rewriteSQL (for Change.Force) does not.
const (
	rewriteSQL       = upsertSQL
	upsertChangedSQL = upsertSQL + `
WHERE kss_secrets.hash <> excluded.hash OR kss_secrets.tombstone <> excluded.tombstone OR kss_secrets.key_id <> excluded.key_id`
)

// Write stores changes, writeChunk rows per transaction, as written by
// claim's holder in claim's epoch. Each transaction first checks that
// claim is still held (errFenced otherwise, see fenceSQL), then bumps the
// version counter and seals its rows under that version, so the version
// bound into a ciphertext is the one its row carries. A row whose stored
// hash already equals the change's is left as it is (a second leader, or a
// retry after a lost acknowledgement), unless the change forces it. It
// returns the last version written.
//
// A transaction costs two round trips to the database, however many rows
// it has (writeChunk): its statements are pipelined in two batches, the
// second sent once the first has given the version to seal under. The
// database is often in another region.
func (s *Store) Write(ctx context.Context, claim Claim, keyID string, changes []Change, seal SealFunc) (int64, error) {
	var last int64
	for _, chunk := range writeChunks(changes) {
		err := s.retrying(ctx, func() error {
			version, err := s.writeChunk(ctx, claim, keyID, chunk, seal)
			if err == nil {
				last = version
			}
			return err
		})
		if err != nil {
			return last, err
		}
	}
	return last, nil
}

// writeChunk is one transaction of Write.
func (s *Store) writeChunk(ctx context.Context, claim Claim, keyID string, chunk []Change, seal SealFunc) (version int64, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Release()
	open := false
	defer func() {
		if err != nil && open {
			abort(ctx, conn)
		}
	}()

	// First round trip: begin, check the claim (fencing), take the version.
	first := &pgx.Batch{}
	first.Queue("BEGIN ISOLATION LEVEL SERIALIZABLE")
	first.Queue(fenceSQL, claim.Holder, claim.Epoch)
	first.Queue(bumpVersionSQL, versionCeiling)
	br := conn.SendBatch(ctx, first)
	_, err = br.Exec()
	open = err == nil
	var epoch int64
	if err == nil {
		err = fenceResult(br.QueryRow().Scan(&epoch))
	}
	if err == nil {
		if err = br.QueryRow().Scan(&version); err != nil {
			err = fmt.Errorf("bump version: %w", err)
		}
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return 0, err
	}

	// Second: the rows, sealed under that version, and the commit.
	second := &pgx.Batch{}
	for _, force := range []bool{false, true} {
		u := newUpsertRows(chunk, force)
		for i := range chunk {
			if c := &chunk[i]; c.Force == force {
				ciphertext, err := seal(version, c)
				if err != nil {
					return 0, fmt.Errorf("seal %s: %w", c.ObjectKey, err)
				}
				c.Version = version
				u.add(c, ciphertext)
			}
		}
		if len(u.namespaces) == 0 {
			continue
		}
		stmt := upsertChangedSQL
		if force {
			stmt = rewriteSQL
		}
		second.Queue(stmt, u.namespaces, u.names, u.starts, keyID, u.hashes, version, claim.Holder, u.tombstones, claim.Epoch, u.lengths, u.ciphertexts)
	}
	upserts := second.Len()
	second.Queue("COMMIT")
	br = conn.SendBatch(ctx, second)
	for range upserts {
		if _, err = br.Exec(); err != nil {
			err = fmt.Errorf("upsert: %w", err)
			break
		}
	}
	if err == nil {
		// A commit the database answered, even with an error (a
		// serialization failure), ended the transaction.
		_, err = br.Exec()
		var pgErr *pgconn.PgError
		open = err != nil && !errors.As(err, &pgErr)
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	return version, err
}

// abort rolls back the open transaction on conn after a failure; if even
// that fails (the connection is broken, or ctx ended), the connection is
// closed, so that the pool never hands out one inside a transaction.
func abort(ctx context.Context, conn *pgxpool.Conn) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(rctx, "ROLLBACK"); err != nil {
		_ = conn.Conn().Close(rctx)
	}
}

// writeChunks splits changes into transactions of at most writeChunk rows
// and about writeChunkBytes of ciphertext (at least one row each): 500
// near-1 MiB Secrets would otherwise be one 700 MB transaction.
func writeChunks(changes []Change) [][]Change {
	var out [][]Change
	start, bytes := 0, 0
	for i := range changes {
		size := changes[i].sealedEstimate()
		if i > start && (i-start >= writeChunk || bytes+size > writeChunkBytes) {
			out = append(out, changes[start:i])
			start, bytes = i, 0
		}
		bytes += size
	}
	if start < len(changes) {
		out = append(out, changes[start:])
	}
	return out
}

// sealedEstimate is about how long c's ciphertext will be.
func (c *Change) sealedEstimate() int {
	if c.Size > 0 || c.Payload == nil {
		return c.Size
	}
	return ApproxSealedSize(c.Payload)
}

// upsertRows are the parameters of one upsert statement: column arrays,
// but for the ciphertexts, which are one after another in one bytea that
// the statement cuts (row i's is length[i] bytes from starts[i], 1-based).
// A bytea[] of 2,000 rows costs pgx about 7 times its size while it
// encodes it (a buffer grown by appends, then copied into the message):
// 39 MB for one chunk, the largest share of a leader's peak memory in its
// first pass at N = 100,000 (issue 13). One bytea is copied once, into a
// buffer allocated once; it is passed last, so that nothing is appended
// after it.
type upsertRows struct {
	namespaces, names []string
	hashes            [][]byte
	tombstones        []bool
	starts, lengths   []int32
	ciphertexts       []byte
}

// newUpsertRows sizes the rows of chunk whose Force is force.
func newUpsertRows(chunk []Change, force bool) *upsertRows {
	size := 0
	for i := range chunk {
		if chunk[i].Force == force {
			size += chunk[i].sealedEstimate()
		}
	}
	// Room for an estimate a little short (JSON escapes): growing it by
	// appends would cost more than the slack.
	return &upsertRows{ciphertexts: make([]byte, 0, size+size/16)}
}

func (u *upsertRows) add(c *Change, ciphertext []byte) {
	u.namespaces, u.names = append(u.namespaces, c.Namespace), append(u.names, c.Name)
	u.starts, u.lengths = append(u.starts, int32(len(u.ciphertexts))+1), append(u.lengths, int32(len(ciphertext)))
	u.ciphertexts = append(u.ciphertexts, ciphertext...)
	u.hashes = append(u.hashes, c.Hash)
	u.tombstones = append(u.tombstones, c.Payload.Deleted)
}

// RowsNotUnder returns up to limit rows (ciphertexts included, but for one
// over MaxCiphertextSize, which is never transferred) whose key id is not
// keyID, after the row after in (namespace, name) order: the
// rows a key rotation still has to rewrite.
func (s *Store) RowsNotUnder(ctx context.Context, keyID string, after ObjectKey, limit int) ([]Row, error) {
	rows, err := s.pool.Query(ctx, `
SELECT namespace, name, CASE WHEN octet_length(ciphertext) <= $5 THEN ciphertext END, key_id, hash, tombstone, version, source_cluster, updated_at, octet_length(ciphertext)
FROM kss_secrets
WHERE key_id <> $1 AND (namespace, name) > ($2, $3)
ORDER BY namespace, name
LIMIT $4`, keyID, after.Namespace, after.Name, limit, MaxCiphertextSize)
	if err != nil {
		return nil, fmt.Errorf("read rows to re-encrypt: %w", err)
	}
	return collectRows(rows, "read rows to re-encrypt")
}

// ResealFunc re-encrypts row r (as read) for the new version: it returns
// the new ciphertext and hash.
type ResealFunc func(version int64, r *Row) (ciphertext, hash []byte, err error)

// Reseal rewrites rows under keyID and a new version in one transaction,
// keeping their source cluster and tombstone flag. A row whose version
// moved since it was read is left alone: its writer sealed it under its
// own current key, and overwriting it would lose that write. It returns
// how many rows were rewritten.
func (s *Store) Reseal(ctx context.Context, keyID string, rows []Row, reseal ResealFunc) (int, error) {
	n := len(rows)
	namespaces, names := make([]string, n), make([]string, n)
	versions := make([]int64, n)
	ciphertexts, hashes := make([][]byte, n), make([][]byte, n)
	for i := range rows {
		namespaces[i], names[i], versions[i] = rows[i].Namespace, rows[i].Name, rows[i].Version
	}
	var rewritten int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var version int64
		err := tx.QueryRow(ctx, bumpVersionSQL, versionCeiling).Scan(&version)
		if err != nil {
			return fmt.Errorf("bump version: %w", err)
		}
		for i := range rows {
			if ciphertexts[i], hashes[i], err = reseal(version, &rows[i]); err != nil {
				return fmt.Errorf("re-encrypt %s: %w", rows[i].ObjectKey, err)
			}
		}
		tag, err := tx.Exec(ctx, `
UPDATE kss_secrets AS s
SET ciphertext = u.ciphertext, key_id = $6, hash = u.hash, version = $7, updated_at = now(),
    writer_epoch = (SELECT epoch FROM kss_writer WHERE id = 1)
FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BYTEA[], $5::BYTEA[]) AS u (namespace, name, version, ciphertext, hash)
WHERE s.namespace = u.namespace AND s.name = u.name AND s.version = u.version`,
			namespaces, names, versions, ciphertexts, hashes, keyID, version)
		if err != nil {
			return fmt.Errorf("rewrite rows: %w", err)
		}
		rewritten = int(tag.RowsAffected())
		return nil
	})
	return rewritten, err
}

// MaxVersion returns the counter: the version of the last committed write.
func (s *Store) MaxVersion(ctx context.Context) (int64, error) {
	var v int64
	err := s.pool.QueryRow(ctx, `SELECT version FROM kss_version WHERE id = 1`).Scan(&v)
	return v, err
}

// Lag is how far a cursor is behind the database.
type Lag struct {
	MaxVersion int64         // the counter: the last committed write
	Rows       int64         // rows changed after the cursor
	Oldest     time.Duration // how long ago the oldest of them changed, by the database's clock
}

// Lag reads how far the cursor version after is behind (the status
// subcommand); after 0 counts every row.
func (s *Store) Lag(ctx context.Context, after int64) (Lag, error) {
	var l Lag
	var oldest float64
	err := s.pool.QueryRow(ctx, `
SELECT (SELECT version FROM kss_version WHERE id = 1), count(*),
       COALESCE(EXTRACT(EPOCH FROM now() - min(updated_at)), 0)::FLOAT8
FROM kss_secrets WHERE version > $1`, after).Scan(&l.MaxVersion, &l.Rows, &oldest)
	if err != nil {
		return Lag{}, fmt.Errorf("read the database's version: %w", err)
	}
	l.Oldest = time.Duration(oldest * float64(time.Second))
	return l, nil
}
