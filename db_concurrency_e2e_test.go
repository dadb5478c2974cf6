package main

// Tests of concurrent writers against real PostgreSQL: serialization
// retries, and version order equal to commit order.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Every test here runs against a real PostgreSQL (a fresh database each);
// SQL is never mocked. CockroachDB cannot run here: its compatibility is
// covered by portable_test.go and by the write path's SERIALIZABLE
// isolation, which these tests exercise.

// TestWriteConcurrent: eight writers at once (a second leader, a retried
// batch) all succeed through retries of serialization failures, every
// transaction gets its own version, and a follower paging throughout never
// misses a row.
func TestWriteConcurrent(t *testing.T) {
	s := mustMigratedStore(t)
	reader := mustOpenStore(t, dsnOf(t, s))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const writers, writes = 8, 20

	versions := make([][]int64, writers)
	errs := make([]error, writers)
	claim := claimFor(t, s, dbTestCluster)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range writes {
				// One row of its own and one row every writer fights over.
				changes := []Change{
					change("own", fmt.Sprintf("w%d-%02d", g, i), uint64(g*1000+i)),
					change("hot", fmt.Sprintf("h%d", i%3), uint64(g*1000+i)),
				}
				v, err := s.Write(ctx, claim, "kid", changes, labelSeal)
				if err != nil {
					errs[g] = fmt.Errorf("write %d: %w", i, err)
					return
				}
				versions[g] = append(versions[g], v)
			}
		})
	}
	var writersDone atomic.Bool
	go func() { wg.Wait(); writersDone.Store(true) }()

	// The follower pages with a small limit while the writers run, and
	// stops after a pass that began once they were all done.
	seen := map[ObjectKey]int64{}
	var c Cursor
	var readErr error
	for pulls := 0; ; pulls++ {
		done := writersDone.Load()
		page, err := reader.Pull(ctx, c, 7)
		if err != nil {
			readErr = err
			break
		}
		for i := range page {
			if !c.Before(&page[i]) {
				t.Errorf("Pull(%+v) returned %s@%d, not after the cursor", c, page[i].ObjectKey, page[i].Version)
			}
			seen[page[i].ObjectKey] = page[i].Version
			c = Cursor{page[i].Version, page[i].Namespace, page[i].Name}
		}
		if done && len(page) < 7 {
			break
		}
		if len(page) == 0 {
			// Pacing, not synchronisation: leave the CPU to the writers.
			select {
			case <-ctx.Done():
			case <-time.After(time.Millisecond):
			}
		}
	}
	wg.Wait()
	if readErr != nil {
		t.Fatalf("reader: %v", readErr)
	}
	for g, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", g, err)
		}
	}
	if t.Failed() {
		return
	}

	all := slices.Concat(versions...)
	slices.Sort(all)
	if len(slices.Compact(slices.Clone(all))) != writers*writes {
		t.Errorf("versions returned by %d writes are not distinct: %v", writers*writes, all)
	}
	if got := mustMaxVersion(t, s); got != writers*writes || all[len(all)-1] != got {
		t.Errorf("MaxVersion() = %d, highest returned %d; want %d (one per transaction)", got, all[len(all)-1], writers*writes)
	}
	final := mustPullAll(t, s, Cursor{}, 1000)
	if len(final) != writers*writes+3 {
		t.Errorf("rows = %d; want %d", len(final), writers*writes+3)
	}
	for _, r := range final {
		if seen[r.ObjectKey] != r.Version {
			t.Errorf("the concurrent reader saw %s at version %d; final version %d", r.ObjectKey, seen[r.ObjectKey], r.Version)
		}
	}
	for g := range writers {
		for i, v := range versions[g] {
			key := ObjectKey{"own", fmt.Sprintf("w%d-%02d", g, i)}
			if idx := slices.IndexFunc(final, func(r Row) bool { return r.ObjectKey == key }); idx < 0 || final[idx].Version != v {
				t.Errorf("row %s is not at the version its Write returned (%d)", key, v)
			}
		}
	}
}

// dsnOf returns the DSN of s's database, so that a second pool (a
// follower) can connect to it.
func dsnOf(tb testing.TB, s *Store) string {
	tb.Helper()
	return s.pool.Config().ConnString()
}

// TestWriteCommitOrder is the race that rules out sequences and updated_at
// cursors: transaction A takes a version and stays open, B starts after it.
// With version order equal to commit order, B can neither commit first nor
// take a version below A's, so a follower whose cursor has passed A's row
// still receives B's.
func TestWriteCommitOrder(t *testing.T) {
	s := mustMigratedStore(t)
	reader := mustOpenStore(t, dsnOf(t, s))
	ctx := t.Context()

	type result struct {
		version int64
		err     error
	}
	// blockingSeal reports the version it was first called with on
	// sealing and then waits for release.
	blockingSeal := func(sealing chan<- int64, release <-chan struct{}) SealFunc {
		var once sync.Once
		return func(v int64, c *Change) ([]byte, error) {
			once.Do(func() {
				sealing <- v
				select {
				case <-release:
				case <-ctx.Done():
				}
			})
			return labelSeal(v, c)
		}
	}
	aSealing, bSealing := make(chan int64, 1), make(chan int64, 1)
	aRelease, bRelease := make(chan struct{}), make(chan struct{})
	releaseA, releaseB := sync.OnceFunc(func() { close(aRelease) }), sync.OnceFunc(func() { close(bRelease) })
	t.Cleanup(releaseA)
	t.Cleanup(releaseB)
	aDone, bDone := make(chan result, 1), make(chan result, 1)

	go func() {
		v, err := s.Write(ctx, claimFor(t, s, dbTestCluster), "kid", []Change{change("ns", "a", 1)}, blockingSeal(aSealing, aRelease))
		aDone <- result{v, err}
	}()
	aVersion := receive(t, aSealing, 30*time.Second, "A to take its version")

	go func() {
		v, err := s.Write(ctx, claimFor(t, s, dbTestCluster), "kid", []Change{change("ns", "b", 2)}, blockingSeal(bSealing, bRelease))
		bDone <- result{v, err}
	}()
	// B is queued behind A on the version counter's row.
	eventually(t, 30*time.Second, func() error {
		n := queryInt(t, reader, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%kss_version%'`)
		if n != 1 {
			return fmt.Errorf("%d transactions wait on the version counter; want B", n)
		}
		return nil
	})
	if rows := mustPullAll(t, reader, Cursor{}, 10); len(rows) != 0 {
		t.Errorf("a reader sees %d rows while A and B are open; want 0", len(rows))
	}
	if got := mustMaxVersion(t, reader); got != 0 {
		t.Errorf("MaxVersion() while A is open = %d; want 0", got)
	}

	releaseA()
	a := receive(t, aDone, 30*time.Second, "A to commit")
	if a.err != nil || a.version != aVersion {
		t.Fatalf("Write A = %d, %v; want %d, nil", a.version, a.err, aVersion)
	}
	bVersion := receive(t, bSealing, 30*time.Second, "B to take its version after A committed")

	// The follower pulls while B is still open: it sees A and moves its
	// cursor past A's row.
	rows := mustPullAll(t, reader, Cursor{}, 10)
	if len(rows) != 1 || rows[0].Name != "a" || rows[0].Version != aVersion {
		t.Fatalf("Pull after A committed = %+v; want A's row at version %d only", rows, aVersion)
	}
	cursor := Cursor{rows[0].Version, rows[0].Namespace, rows[0].Name}
	if rows := mustPullAll(t, reader, cursor, 10); len(rows) != 0 {
		t.Errorf("Pull(%+v) while B is open = %d rows; want 0", cursor, len(rows))
	}

	releaseB()
	b := receive(t, bDone, 30*time.Second, "B to commit")
	if b.err != nil {
		t.Fatalf("Write B: %v", b.err)
	}
	if b.version != bVersion || b.version <= a.version {
		t.Errorf("Write B = version %d (sealed at %d); want above A's %d: version order must be commit order", b.version, bVersion, a.version)
	}
	rows = mustPullAll(t, reader, cursor, 10)
	if len(rows) != 1 || rows[0].Name != "b" || rows[0].Version != b.version {
		t.Errorf("Pull(%+v) after B committed = %+v; want B's row at version %d", cursor, rows, b.version)
	}
}

// TestInTxRetries: inTx runs at SERIALIZABLE, reruns the whole transaction
// (earlier attempts rolled back) on 40001/40P01, and gives up after
// maxRetries retries.
func TestInTxRetries(t *testing.T) {
	s := mustMigratedStore(t)
	s.maxRetries = 3
	sentinel := errors.New("not a database error")
	tests := []struct {
		name      string
		failures  int
		err       error
		wantCalls int
		wantErr   string // SQLSTATE, "sentinel" or ""
	}{
		{"success", 0, nil, 1, ""},
		{"two serialization failures", 2, &pgconn.PgError{Code: "40001"}, 3, ""},
		{"deadlock", 1, &pgconn.PgError{Code: "40P01"}, 2, ""},
		{"wrapped serialization failure", 3, fmt.Errorf("bump version: %w", &pgconn.PgError{Code: "40001"}), 4, ""},
		{"gives up after maxRetries", 100, &pgconn.PgError{Code: "40001"}, 4, "40001"},
		{"unique violation is not retried", 100, &pgconn.PgError{Code: "23505"}, 1, "23505"},
		{"other errors are not retried", 100, sentinel, 1, "sentinel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := mustMaxVersion(t, s)
			calls := 0
			err := s.inTx(t.Context(), func(tx pgx.Tx) error {
				calls++
				var iso string
				if err := tx.QueryRow(t.Context(), `SHOW transaction_isolation`).Scan(&iso); err != nil {
					return err
				}
				if iso != "serializable" {
					t.Errorf("inTx runs at %q; want serializable", iso)
				}
				if _, err := tx.Exec(t.Context(), `UPDATE kss_version SET version = version + 1 WHERE id = 1`); err != nil {
					return err
				}
				if calls <= tt.failures {
					return tt.err
				}
				return nil
			})
			if calls != tt.wantCalls {
				t.Errorf("inTx called fn %d times; want %d", calls, tt.wantCalls)
			}
			var pgErr *pgconn.PgError
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("inTx = %v; want nil", err)
			case tt.wantErr == "sentinel" && !errors.Is(err, sentinel):
				t.Errorf("inTx = %v; want the function's error", err)
			case tt.wantErr != "" && tt.wantErr != "sentinel" && (!errors.As(err, &pgErr) || pgErr.Code != tt.wantErr):
				t.Errorf("inTx = %v; want SQLSTATE %s", err, tt.wantErr)
			}
			// Only a successful attempt commits its increment.
			want := before
			if tt.wantErr == "" {
				want++
			}
			if got := mustMaxVersion(t, s); got != want {
				t.Errorf("counter after inTx = %d; want %d (failed attempts rolled back)", got, want)
			}
		})
	}

	t.Run("context ends during backoff", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		calls := 0
		err := s.inTx(ctx, func(pgx.Tx) error {
			calls++
			cancel()
			return &pgconn.PgError{Code: "40001"}
		})
		if !errors.Is(err, context.Canceled) || calls != 1 {
			t.Errorf("inTx with a cancelled context = %v after %d calls; want context.Canceled after 1", err, calls)
		}
	})
}

// TestWriteRetriesSerializationFailure forces a real serialization failure:
// while a Write's transaction is open, another session changes the row it is
// about to upsert. PostgreSQL aborts the Write with 40001 at SERIALIZABLE;
// Write must run the whole transaction again (sealing again, under the
// version it then gets) and store its change: a lost write that reports
// success is what the spec rules out.
func TestWriteRetriesSerializationFailure(t *testing.T) {
	s := mustMigratedStore(t)
	ctx := t.Context()
	mustWrite(t, s, []Change{change("ns", "a", 1)}, labelSeal)

	sealing := make(chan int64, 4)
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce)
	var calls atomic.Int32
	seal := func(v int64, c *Change) ([]byte, error) {
		n := calls.Add(1)
		sealing <- v
		if n == 1 {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return fmt.Appendf(nil, "attempt %d at %d", n, v), nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(ctx, claimFor(t, s, dbTestCluster), "kid", []Change{change("ns", "a", 2)}, seal)
		done <- err
	}()
	first := receive(t, sealing, 30*time.Second, "the Write to take its version")
	// Another session changes the row and commits while the Write's
	// snapshot predates it.
	if _, err := s.pool.Exec(ctx, `UPDATE kss_secrets SET updated_at = now() WHERE namespace = 'ns' AND name = 'a'`); err != nil {
		t.Fatal(err)
	}
	releaseOnce()
	if err := receive(t, done, 30*time.Second, "the Write to finish"); err != nil {
		t.Fatalf("Write after a serialization failure = %v; want nil (retried)", err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("seal called %d times; want 2 (one failed attempt, one retry)", n)
	}
	second := receive(t, sealing, time.Second, "the retry's version")
	if second != first {
		t.Errorf("retry sealed at version %d; want %d (the failed attempt's bump rolled back)", second, first)
	}
	rows := mustPullAll(t, s, Cursor{}, 10)
	if len(rows) != 1 || !bytes.Equal(rows[0].Hash, hashOf(2)) || rows[0].Version != second ||
		string(rows[0].Ciphertext) != fmt.Sprintf("attempt 2 at %d", second) {
		t.Errorf("row after the retried Write = %+v; want hash %x at version %d from attempt 2", rows, hashOf(2), second)
	}
}
