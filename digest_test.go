package main

import "testing"

// TestBucketWidth: an idle full pass reads at most about digestBuckets
// digests, whatever the counter.
func TestBucketWidth(t *testing.T) {
	for _, max := range []int64{0, 1, 255, 256, 257, 100_000, 1 << 40} {
		w := bucketWidth(max)
		if w < 1 || max/w > digestBuckets {
			t.Errorf("bucketWidth(%d) = %d: %d buckets; want at least 1 and at most %d", max, w, max/w+1, digestBuckets)
		}
	}
	// A forged negative version lands where SQL's % puts it.
	if got := bucketOf(-7, 3); got != -6 {
		t.Errorf("bucketOf(-7, 3) = %d; want -6, as SQL's %% truncates", got)
	}
}
