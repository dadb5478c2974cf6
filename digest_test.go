package main

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"testing"
)

// TestBucketWidth: an idle full pass reads at most about digestBuckets
// digests, whatever the counter.
func TestBucketWidth(t *testing.T) {
	for _, max := range []int64{-5, 0, 1, 255, 256, 257, 512, 513, 100_000, 1 << 40, math.MaxInt64} {
		w := bucketWidth(max)
		if w < 1 || max/w > digestBuckets {
			t.Errorf("bucketWidth(%d) = %d: %d buckets; want at least 1 and at most %d", max, w, max/w+1, digestBuckets)
		}
		// A power of two, and no wider than it must be (fewer rows to read
		// in a bucket that differs).
		if w&(w-1) != 0 || w > 1 && max/(w/2) <= digestBuckets {
			t.Errorf("bucketWidth(%d) = %d; want the least power of two of at most %d buckets", max, w, digestBuckets)
		}
	}
	// A forged negative version lands where SQL's % puts it.
	if got := bucketOf(-7, 3); got != -6 {
		t.Errorf("bucketOf(-7, 3) = %d; want -6, as SQL's %% truncates", got)
	}
}

// TestRowIndexDigests: the digests the index keeps up to date as rows are
// set and removed are those computed afresh from its rows, whatever the
// changes (a header's, what the leader learns of a row, a row that moves
// to another bucket or leaves one empty) and when the width changes.
func TestRowIndexDigests(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	idx := newRowIndex()
	version := int64(0)
	for step := range 3000 {
		k := ObjectKey{Namespace: fmt.Sprint("ns-", r.IntN(3)), Name: fmt.Sprint("s-", r.IntN(200))}
		st, ok := idx.rows[k]
		switch op := r.IntN(10); {
		case op == 0:
			idx.remove(k)
		case op == 1 && ok:
			st.Sealed[0]++ // learnt, not in the header
			st.Damaged = !st.Damaged
			idx.set(k, st)
		case op == 2 && ok:
			st.Tombstone = !st.Tombstone // same version: a database writer's edit
			idx.set(k, st)
		default:
			version += int64(r.IntN(3))
			st.Version, st.Hash, st.KeyID, st.SourceCluster = version, []byte{byte(step)}, "kid", "c"
			idx.set(k, st)
		}
		if r.IntN(20) > 0 {
			continue
		}
		width := bucketWidth(version)
		if r.IntN(10) == 0 {
			width = int64(1 + r.IntN(7)) // another width: all computed again
		}
		fresh := &rowIndex{rows: maps.Clone(idx.rows)}
		want := fresh.digestsOf(width, nil, appendDigestLine)
		if got := idx.digests(width); !maps.Equal(got, want) {
			t.Fatalf("step %d, width %d: the index's kept digests\n%v\nwant, computed afresh,\n%v", step, width, got, want)
		}
		if len(idx.dirty) != 0 {
			t.Fatalf("step %d: %d buckets still dirty after digests", step, len(idx.dirty))
		}
	}
}

// BenchmarkRowIndexDigests: a full pass's digests of an index of 100,000
// rows, computed afresh (the width moved) and kept (ten rows changed since
// the last pass, as in a long first sync or a busy cluster).
func BenchmarkRowIndexDigests(b *testing.B) {
	const rows = 100_000
	idx := newRowIndex()
	for i := range rows {
		idx.set(ObjectKey{Namespace: "ns", Name: fmt.Sprint("secret-", i)}, RowState{Version: int64(i + 1), Hash: make([]byte, 32), KeyID: "kid", SourceCluster: "c"})
	}
	width := bucketWidth(rows)
	b.Run("afresh", func(b *testing.B) {
		for b.Loop() {
			idx.width = 0
			idx.digests(width)
		}
	})
	b.Run("kept", func(b *testing.B) {
		idx.digests(width)
		v := int64(rows)
		for b.Loop() {
			for i := range 10 {
				v++
				idx.set(ObjectKey{Namespace: "ns", Name: fmt.Sprint("secret-", i)}, RowState{Version: v, Hash: make([]byte, 32), KeyID: "kid", SourceCluster: "c"})
			}
			idx.digests(width)
		}
	})
}
