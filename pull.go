package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// The follower's reads of the store: pages of rows after its cursor, with
// or without their ciphertexts, bounded by rows and by bytes.

// Pull returns up to limit rows after cursor in (version, namespace, name)
// order, and no more than pullPageBytes of ciphertext (at least one row):
// morePages tells whether the page was cut. Paging by this key never misses
// a row: a row rewritten while a follower pages moves to a higher version
// and is met again later. Only rows up to the version counter are
// returned, read in the same statement (one snapshot): every correct write
// bumps the counter first, so a row above it has a forged version, and a
// cursor moved to it would skip every row written afterwards. Such a row is
// left to the full pass. A ciphertext larger than MaxCiphertextSize is
// never transferred: its row comes without one, with its Size.
func (s *Store) Pull(ctx context.Context, after Cursor, limit int) ([]Row, error) {
	rows, err := s.pool.Query(ctx, `
SELECT namespace, name, CASE WHEN size <= $5 THEN ciphertext END, key_id, hash, tombstone, version, source_cluster, updated_at, size
FROM (
    SELECT *, sum(CASE WHEN size <= $5 THEN size ELSE 0 END) OVER (ORDER BY version, namespace, name) AS through
    FROM (
        SELECT namespace, name, ciphertext, key_id, hash, tombstone, version, source_cluster, updated_at,
               octet_length(ciphertext) AS size
        FROM kss_secrets
        WHERE (version, namespace, name) > ($1, $2, $3) AND version <= (SELECT version FROM kss_version WHERE id = 1)
        ORDER BY version, namespace, name
        LIMIT $4
    ) AS head
) AS page
WHERE through - (CASE WHEN size <= $5 THEN size ELSE 0 END) < $6
ORDER BY version, namespace, name`, after.Version, after.Namespace, after.Name, limit, MaxCiphertextSize, pullPageBytes)
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	return collectRows(rows, "pull")
}

// pullPageBytes bounds the ciphertext bytes of one pulled page, so that a
// follower holds one page of near-1 MiB Secrets in a few dozen MiB.
const pullPageBytes = 16 << 20

// morePages reports whether a page that Pull returned for limit may be
// followed by more rows: it is full, or it was cut by pullPageBytes (which
// happens only once the rows it holds reach the bound).
func morePages(rows []Row, limit int) bool {
	if len(rows) >= limit {
		return true
	}
	var total int64
	for _, r := range rows {
		if r.Size <= MaxCiphertextSize {
			total += r.Size
		}
	}
	return len(rows) > 0 && total >= pullPageBytes
}

// collectRows reads the rows of a pull-shaped query: the columns of Row,
// in order.
func collectRows(rows pgx.Rows, what string) ([]Row, error) {
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Row, error) {
		var r Row
		err := row.Scan(&r.Namespace, &r.Name, &r.Ciphertext, &r.KeyID, &r.Hash, &r.Tombstone, &r.Version, &r.SourceCluster, &r.UpdatedAt, &r.Size)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// FillCiphertexts loads the ciphertext of rows known by their headers (a
// daemon's index, digest.go), in one query. A row rewritten since keeps a nil Ciphertext: it
// has a newer version now, which the next incremental pull brings. So does
// a row whose ciphertext is larger than MaxCiphertextSize, which no correct
// writer produces and which is never transferred.
func (s *Store) FillCiphertexts(ctx context.Context, rows []*Row) error {
	if len(rows) == 0 {
		return nil
	}
	namespaces, names, versions := make([]string, len(rows)), make([]string, len(rows)), make([]int64, len(rows))
	byKey := make(map[ObjectKey]*Row, len(rows))
	for i, r := range rows {
		namespaces[i], names[i], versions[i] = r.Namespace, r.Name, r.Version
		byKey[r.ObjectKey] = r
	}
	res, err := s.pool.Query(ctx, `
SELECT s.namespace, s.name, s.version, s.ciphertext
FROM kss_secrets AS s
JOIN unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[]) AS u (namespace, name, version)
  ON s.namespace = u.namespace AND s.name = u.name AND s.version = u.version
WHERE octet_length(s.ciphertext) <= $4`, namespaces, names, versions, MaxCiphertextSize)
	if err != nil {
		return fmt.Errorf("read ciphertexts: %w", err)
	}
	var k ObjectKey
	var version int64
	var ciphertext []byte
	_, err = pgx.ForEachRow(res, []any{&k.Namespace, &k.Name, &version, &ciphertext}, func() error {
		if r := byKey[k]; r != nil && r.Version == version {
			r.Ciphertext, ciphertext = ciphertext, nil
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read ciphertexts: %w", err)
	}
	return nil
}

// byteBatches splits rows into consecutive batches whose sizes add up to
// at most maxBytes, so that what is held in memory at once is bounded by
// bytes and not only by rows. A row larger than maxBytes is a batch alone.
func byteBatches(rows []*Row, maxBytes int64) [][]*Row {
	var out [][]*Row
	start, sum := 0, int64(0)
	for i, r := range rows {
		if i > start && sum+r.Size > maxBytes {
			out = append(out, rows[start:i])
			start, sum = i, 0
		}
		sum += r.Size
	}
	if start < len(rows) {
		out = append(out, rows[start:])
	}
	return out
}
