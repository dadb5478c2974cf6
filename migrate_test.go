package main

import (
	"slices"
	"testing"
)

func TestSplitStatements(t *testing.T) {
	tests := []struct {
		name string
		sql  string
		want []string
	}{
		{"empty", "", nil},
		{"comments only", "-- a\n  -- b;\n\n", nil},
		{"one", "CREATE TABLE t (a INT);\n", []string{"CREATE TABLE t (a INT);"}},
		{"without final semicolon", "SELECT 1", []string{"SELECT 1"}},
		{"two with comments", "-- first\nCREATE TABLE t (\n    a INT -- why\n);\n\n-- second;\nINSERT INTO t VALUES (1) ON CONFLICT DO NOTHING;\n",
			[]string{"CREATE TABLE t (\n    a INT -- why\n);", "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING;"}},
		{"semicolon inside a line does not split", "SELECT ';' AS x, 1;\n", []string{"SELECT ';' AS x, 1;"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := splitStatements(tt.sql); !slices.Equal(got, tt.want) {
				t.Errorf("splitStatements(%q) = %q; want %q", tt.sql, got, tt.want)
			}
		})
	}
}
