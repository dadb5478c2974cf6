// Package migrations holds the database schema as ordered SQL files,
// embedded in the binary. Files are applied in lexical order, each once,
// and recorded in kss_schema_migrations. Every statement must be
// idempotent (IF NOT EXISTS, ON CONFLICT DO NOTHING) and run on both
// PostgreSQL and CockroachDB: a replica may die half-way through a file,
// and the next one re-runs it. Statements end with a semicolon at the end
// of a line; each runs in its own transaction.
package migrations

import "embed"

// FS holds the *.sql files.
//
//go:embed *.sql
var FS embed.FS
