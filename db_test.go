package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestCursorBefore(t *testing.T) {
	row := func(v int64, ns, name string) *Row { return &Row{ObjectKey: ObjectKey{ns, name}, Version: v} }
	tests := []struct {
		c    Cursor
		r    *Row
		want bool
	}{
		{Cursor{}, row(1, "a", "a"), true},
		{Cursor{}, row(0, "", ""), false},
		{Cursor{1, "b", "b"}, row(2, "a", "a"), true},
		{Cursor{2, "a", "a"}, row(1, "z", "z"), false},
		{Cursor{1, "a", "z"}, row(1, "b", "a"), true},
		{Cursor{1, "b", "a"}, row(1, "a", "z"), false},
		{Cursor{1, "a", "a"}, row(1, "a", "b"), true},
		{Cursor{1, "a", "b"}, row(1, "a", "a"), false},
		{Cursor{1, "a", "a"}, row(1, "a", "a"), false},
		{Cursor{1, "a", "a-b"}, row(1, "a", "a.b"), true}, // byte order, as the database's pull order
	}
	for _, tt := range tests {
		if got := tt.c.Before(tt.r); got != tt.want {
			t.Errorf("Cursor%+v.Before(%d %s) = %v; want %v", tt.c, tt.r.Version, tt.r.ObjectKey, got, tt.want)
		}
	}
}

// Before reports whether c comes before r in pull order, comparing bytes
// as the tests' C-collation database does.
func (c Cursor) Before(r *Row) bool {
	if r.Version != c.Version {
		return r.Version > c.Version
	}
	if r.Namespace != c.Namespace {
		return r.Namespace > c.Namespace
	}
	return r.Name > c.Name
}

func TestRetryable(t *testing.T) {
	pgErr := func(code string) error { return &pgconn.PgError{Code: code, Message: "m"} }
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", errors.New("boom"), false},
		{"context canceled", context.Canceled, false},
		{"40001 serialization_failure", pgErr("40001"), true},
		{"40P01 deadlock_detected", pgErr("40P01"), true},
		{"23505 unique_violation", pgErr("23505"), false},
		{"42P07 duplicate_table", pgErr("42P07"), false},
		{"40003 statement_completion_unknown", pgErr("40003"), false},
		{"40001 wrapped", fmt.Errorf("upsert: %w", pgErr("40001")), true},
		{"40P01 wrapped twice", fmt.Errorf("write: %w", fmt.Errorf("bump version: %w", pgErr("40P01"))), true},
		{"40001 joined", errors.Join(errors.New("rollback failed"), pgErr("40001")), true},
		{"23505 wrapped", fmt.Errorf("upsert: %w", pgErr("23505")), false},
	}
	for _, tt := range tests {
		if got := retryable(tt.err); got != tt.want {
			t.Errorf("retryable(%v) = %v; want %v", tt.name, got, tt.want)
		}
	}
}

func TestByteBatches(t *testing.T) {
	rows := func(sizes ...int64) []*Row {
		var out []*Row
		for _, s := range sizes {
			out = append(out, &Row{Size: s})
		}
		return out
	}
	shape := func(batches [][]*Row) string {
		var parts []string
		for _, b := range batches {
			var sizes []string
			for _, r := range b {
				sizes = append(sizes, strconv.FormatInt(r.Size, 10))
			}
			parts = append(parts, strings.Join(sizes, "+"))
		}
		return strings.Join(parts, " | ")
	}
	tests := []struct {
		sizes []int64
		max   int64
		want  string
	}{
		{nil, 10, ""},
		{[]int64{3, 3, 3}, 10, "3+3+3"},
		{[]int64{3, 3, 3, 3}, 10, "3+3+3 | 3"},
		{[]int64{5, 5, 5}, 10, "5+5 | 5"},
		{[]int64{20, 1, 1}, 10, "20 | 1+1"}, // larger than the bound: alone
		{[]int64{1, 20, 1}, 10, "1 | 20 | 1"},
		{[]int64{0, 0, 0}, 0, "0+0+0"},
	}
	for _, tt := range tests {
		if got := shape(byteBatches(rows(tt.sizes...), tt.max)); got != tt.want {
			t.Errorf("byteBatches(%v, %d) = %q; want %q", tt.sizes, tt.max, got, tt.want)
		}
	}
}

func TestWriteChunksBounds(t *testing.T) {
	sized := func(n int) Change {
		return Change{Payload: &Payload{Data: map[string][]byte{"k": make([]byte, n)}}}
	}
	many := func(n, size int) []Change {
		out := make([]Change, n)
		for i := range out {
			out[i] = sized(size)
		}
		return out
	}
	lens := func(chunks [][]Change) []int {
		var out []int
		for _, c := range chunks {
			out = append(out, len(c))
		}
		return out
	}
	mib := 1 << 20
	tests := []struct {
		name    string
		changes []Change
		want    []int
	}{
		{"none", nil, nil},
		{"small rows: by count", many(2*writeChunk+200, 100), []int{writeChunk, writeChunk, 200}},
		{"near-1 MiB rows: by bytes", many(40, mib-1000), []int{6, 6, 6, 6, 6, 6, 4}},
		{"one row larger than the bound: alone", append(many(1, 20*mib), many(2, 100)...), []int{1, 2}},
	}
	for _, tt := range tests {
		chunks := writeChunks(tt.changes)
		if got := lens(chunks); !slices.Equal(got, tt.want) {
			t.Errorf("writeChunks(%s) sizes = %v; want %v", tt.name, got, tt.want)
		}
		for _, c := range chunks {
			bytes := 0
			for i := range c {
				bytes += ApproxSealedSize(c[i].Payload)
			}
			if len(c) > 1 && bytes > writeChunkBytes {
				t.Errorf("writeChunks(%s): a chunk of %d rows holds %d bytes; want at most %d", tt.name, len(c), bytes, writeChunkBytes)
			}
		}
	}
}
