package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

// dbSnapshot is what the idle phase compares before and after: the
// server's per-table row-write counters, and the rows themselves (so that
// a write is seen even if the counters lag).
type dbSnapshot struct {
	tupleWrites map[string]int64 // table -> n_tup_ins + n_tup_upd + n_tup_del
	version     int64            // kss_version
	rows        map[key]string   // kss_secrets row -> version, updated_at, digest of ciphertext and hash
}

// takeDBSnapshot reads the counters and rows of the daemons' database.
//
// PostgreSQL's statistics are collected per backend and flushed to shared
// memory when the backend goes idle, at most once a second: a write is
// counted about a second after it committed. The caller lets the database
// rest a moment before a snapshot; the row comparison does not depend on
// it.
func takeDBSnapshot(ctx context.Context, db *pgx.Conn) (dbSnapshot, error) {
	s := dbSnapshot{tupleWrites: map[string]int64{}, rows: map[key]string{}}
	// Statistics are cached per transaction; start from fresh ones.
	if _, err := db.Exec(ctx, "SELECT pg_stat_clear_snapshot()"); err != nil {
		return s, fmt.Errorf("pg_stat_clear_snapshot: %w", err)
	}
	rows, err := db.Query(ctx, "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables")
	if err != nil {
		return s, fmt.Errorf("read pg_stat_user_tables: %w", err)
	}
	for rows.Next() {
		var table string
		var n int64
		if err := rows.Scan(&table, &n); err != nil {
			return s, err
		}
		s.tupleWrites[table] = n
	}
	if err := rows.Err(); err != nil {
		return s, fmt.Errorf("read pg_stat_user_tables: %w", err)
	}
	if err := db.QueryRow(ctx, "SELECT version FROM kss_version").Scan(&s.version); err != nil {
		return s, fmt.Errorf("read kss_version: %w", err)
	}
	rows, err = db.Query(ctx, `SELECT namespace, name,
		version::text || ' ' || updated_at::text || ' ' || md5(ciphertext) || ' ' || md5(hash) || ' ' || tombstone::text
		FROM kss_secrets`)
	if err != nil {
		return s, fmt.Errorf("read kss_secrets: %w", err)
	}
	for rows.Next() {
		var k key
		var state string
		if err := rows.Scan(&k.namespace, &k.name, &state); err != nil {
			return s, err
		}
		s.rows[k] = state
	}
	if err := rows.Err(); err != nil {
		return s, fmt.Errorf("read kss_secrets: %w", err)
	}
	return s, nil
}

// dbChange is the difference of two snapshots.
type dbChange struct {
	tupleWrites   int64            // sum over every table but kss_writer
	claimWrites   int64            // kss_writer: the writer claim's renewals, not row writes
	byTable       map[string]int64 // tables with writes
	versionBumps  int64            // kss_version after - before
	rowsChanged   int              // kss_secrets rows added, removed or different
	changedSample []string         // a few of them, for the log
}

func (after dbSnapshot) diff(before dbSnapshot) dbChange {
	c := dbChange{byTable: map[string]int64{}, versionBumps: after.version - before.version}
	for t, n := range after.tupleWrites {
		if d := n - before.tupleWrites[t]; d != 0 {
			c.byTable[t] = d
			if t == "kss_writer" {
				c.claimWrites += d
			} else {
				c.tupleWrites += d
			}
		}
	}
	note := func(k key) {
		c.rowsChanged++
		if len(c.changedSample) < 5 {
			c.changedSample = append(c.changedSample, k.String())
		}
	}
	for k, v := range after.rows {
		if before.rows[k] != v {
			note(k)
		}
	}
	for k := range before.rows {
		if _, ok := after.rows[k]; !ok {
			note(k)
		}
	}
	return c
}

// writes is the figure reported as idle_db_row_writes: the counted row
// writes, or the rows seen changed if the counters missed some.
func (c dbChange) writes() int64 {
	return max(c.tupleWrites, int64(c.rowsChanged)+c.versionBumps)
}

func (c dbChange) String() string {
	var tables []string
	for t, n := range c.byTable {
		tables = append(tables, fmt.Sprintf("%s %d", t, n))
	}
	sort.Strings(tables)
	s := fmt.Sprintf("pg_stat row writes %d, claim renewals %d", c.tupleWrites, c.claimWrites)
	if len(tables) > 0 {
		s += " (" + strings.Join(tables, ", ") + ")"
	}
	s += fmt.Sprintf("; kss_version +%d; kss_secrets rows changed %d", c.versionBumps, c.rowsChanged)
	if len(c.changedSample) > 0 {
		s += " (" + strings.Join(c.changedSample, ", ") + ")"
	}
	return s
}
