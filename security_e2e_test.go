package main

// The database is untrusted (SPEC §1, README "Threat model"). These tests
// play the attacker against a real PostgreSQL and two real kube-apiservers:
// a database writer who edits rows, and a database reader who reads every
// column of every table.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// readRow returns the stored row of name in the test namespace.
func (e *syncEnv) readRow(name string) Row {
	e.t.Helper()
	var r Row
	// A connection of its own, closed at once: readRow is polled.
	conn, err := pgx.Connect(e.t.Context(), e.dsn)
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	err = conn.QueryRow(e.t.Context(), `SELECT namespace, name, ciphertext, key_id, hash, tombstone, version, source_cluster FROM kss_secrets WHERE namespace = $1 AND name = $2`,
		e.ns, name).Scan(&r.Namespace, &r.Name, &r.Ciphertext, &r.KeyID, &r.Hash, &r.Tombstone, &r.Version, &r.SourceCluster)
	if err != nil {
		e.t.Fatalf("read row %s: %v", name, err)
	}
	return r
}

// rowRejected waits until the follower has rejected name's row: an Event
// RowRejected on that Secret in the follower cluster, with the reason, and
// an error line in the logs.
func (e *syncEnv) rowRejected(name, reason string) {
	e.t.Helper()
	if msg := e.waitEvent(name, "RowRejected"); !strings.Contains(msg, "("+reason+")") {
		e.t.Errorf("RowRejected Event for %s: %q; want reason %s", name, msg, reason)
	}
	for line := range strings.Lines(e.logs.String()) {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) != nil {
			continue
		}
		if entry["name"] == name && entry["level"] == "error" && entry["reason"] == reason &&
			entry["msg"] == "row not applied: cannot open it" && entry["error"] != nil {
			return
		}
	}
	e.t.Errorf("no error log line for the rejected row %s (reason %s)", name, reason)
}

// TestDatabaseWriterCannotForge: every way a database writer can edit a row
// is refused by the follower, reported (log line, Event, counter), and
// nothing of it is applied, while the other rows keep syncing.
func TestDatabaseWriterCannotForge(t *testing.T) {
	e := newSyncEnv(t)
	// The leader's full pass would rewrite the rows we tamper with (their
	// hashes no longer match its Secrets), which heals them; a long tick
	// keeps the tampering in place while the watch still syncs changes.
	lc := e.config(true)
	lc.TickSeconds = 3600
	e.start(lc)
	follower := e.start(e.config(false))
	src := e.secrets(e.leader)
	names := []string{"swap-a", "swap-b", "moved", "replayed", "truncated", "flipped", "key-id", "format", "good"}
	for _, n := range names {
		mustCreate(t, src, labelled(n, map[string]string{"k": secretValue + "-" + n}))
	}
	for _, n := range names {
		e.waitSynced(n)
	}
	// An old ciphertext of "replayed", before its value changed.
	old := e.readRow("replayed")
	mustModify(t, src, "replayed", func(s *corev1.Secret) { s.Data["k"] = []byte(secretValue + "-replayed-v2") })
	e.waitSynced("replayed")
	before := map[string]*corev1.Secret{}
	for _, n := range names {
		before[n] = mustGet(t, e.secrets(e.follower), n)
	}

	// Swap the ciphertexts (and hashes) of two rows.
	a, b := e.readRow("swap-a"), e.readRow("swap-b")
	e.tamper("swap-a", func(r *Row) { r.Ciphertext, r.Hash = b.Ciphertext, b.Hash })
	e.tamper("swap-b", func(r *Row) { r.Ciphertext, r.Hash = a.Ciphertext, a.Hash })
	// Copy one Secret's row onto another name, one that does not exist.
	moved := e.readRow("moved")
	e.insertRow(Row{ObjectKey: ObjectKey{e.ns, "moved-copy"}, Ciphertext: moved.Ciphertext, KeyID: moved.KeyID,
		Hash: moved.Hash, SourceCluster: moved.SourceCluster})
	// Replay the older ciphertext of the same Secret under a newer version.
	e.tamper("replayed", func(r *Row) { r.Ciphertext, r.Hash = old.Ciphertext, old.Hash })
	// Truncate; flip one bit in the middle; change the key id; change the
	// format byte.
	e.tamper("truncated", func(r *Row) { r.Ciphertext = r.Ciphertext[:20] })
	e.tamper("flipped", func(r *Row) { r.Ciphertext[len(r.Ciphertext)/2] ^= 0x10 })
	e.tamper("key-id", func(r *Row) { r.KeyID = strings.Repeat("0", len(r.KeyID)) })
	e.tamper("format", func(r *Row) { r.Ciphertext[0] = 2 })

	for name, reason := range map[string]string{
		"swap-a": "tampered", "swap-b": "tampered", "moved-copy": "tampered", "replayed": "tampered",
		"truncated": "invalid", "flipped": "tampered", "key-id": "wrong_key", "format": "invalid",
	} {
		e.rowRejected(name, reason)
	}
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="tampered"}`, 5)
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="invalid"}`, 2)
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="wrong_key"}`, 1)

	// The other rows still sync, after the bad ones in the pull order.
	mustModify(t, src, "good", func(s *corev1.Secret) { s.Data["k"] = []byte("changed") })
	mustCreate(t, src, labelled("after", map[string]string{"k": "v"}))
	e.waitSynced("good")
	e.waitSynced("after")
	// And a full pass has retried the bad rows since, refusing them again.
	n := follower.metric(t, fullOK)
	follower.waitMetric(t, fullOK, n+2)

	// Nothing was applied: every attacked copy is exactly as it was, and
	// the moved row created nothing.
	for _, name := range names[:len(names)-1] {
		got := mustGet(t, e.secrets(e.follower), name)
		if got.UID != before[name].UID || got.ResourceVersion != before[name].ResourceVersion {
			t.Errorf("copy %s was written after its row was tampered with", name)
		}
	}
	if _, err := e.secrets(e.follower).Get(t.Context(), "moved-copy", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a row copied onto another name created a Secret (err %v)", err)
	}
}

// insertRow writes a new row, as a database writer could, under a new
// version from the counter.
func (e *syncEnv) insertRow(r Row) {
	e.t.Helper()
	conn := e.dbConn()
	ctx := e.t.Context()
	if err := conn.QueryRow(ctx, `UPDATE kss_version SET version = version + 1 WHERE id = 1 RETURNING version`).Scan(&r.Version); err != nil {
		e.t.Fatal(err)
	}
	_, err := conn.Exec(ctx, `INSERT INTO kss_secrets (namespace, name, ciphertext, key_id, hash, tombstone, version, source_cluster) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		r.Namespace, r.Name, r.Ciphertext, r.KeyID, r.Hash, r.Tombstone, r.Version, r.SourceCluster)
	if err != nil {
		e.t.Fatalf("insert row %s: %v", r.ObjectKey, err)
	}
}

// TestDatabaseReaderLearnsNothing dumps every table of the database as
// text and looks for anything readable of the synced Secrets: key names,
// label and annotation keys and values, the type and the data, raw and in
// the encodings a dump would show them in (hex for bytea, base64).
func TestDatabaseReaderLearnsNothing(t *testing.T) {
	e := newSyncEnv(t)
	e.startPair()
	src := e.secrets(e.leader)
	plain := map[string]string{
		"key name":         "tls-private-key-name",
		"value":            "value-of-the-private-key-0123456789",
		"label key":        "team-label-key",
		"label value":      "payments-team-label-value",
		"annotation key":   "example.com/annotation-key",
		"annotation value": "annotation-value-text",
		"type":             "example.com/custom-type",
	}
	s := labelled("reader", map[string]string{plain["key name"]: plain["value"]})
	s.Type = corev1.SecretType(plain["type"])
	s.Labels[plain["label key"]] = plain["label value"]
	s.Annotations = map[string]string{plain["annotation key"]: plain["annotation value"]}
	mustCreate(t, src, s)
	// Two Secrets with identical content under other names.
	mustCreate(t, src, labelled("twin-1", map[string]string{"k": plain["value"]}))
	mustCreate(t, src, labelled("twin-2", map[string]string{"k": plain["value"]}))
	for _, n := range []string{"reader", "twin-1", "twin-2"} {
		e.waitSynced(n)
	}

	dump := e.dumpDatabase()
	if !strings.Contains(dump, "twin-1") || !strings.Contains(dump, e.ns) {
		t.Fatalf("the dump does not show namespace and names, which are stored in the clear: the dump is broken\n%s", dump)
	}
	for what, p := range plain {
		for enc, s := range map[string]string{
			"raw": p, "hex": hex.EncodeToString([]byte(p)), "base64": base64.RawStdEncoding.EncodeToString([]byte(p)),
		} {
			if strings.Contains(dump, s) {
				t.Errorf("a database reader finds the %s (%s) in the dump", what, enc)
			}
		}
	}

	// The stored hash is an HMAC under a key derived from ENCRYPTION_KEY.
	// Whoever guesses the whole Secret right still cannot confirm the
	// guess: unkeyed digests and HMACs under any other key differ.
	row := e.readRow("twin-1")
	source := mustGet(t, src, "twin-1")
	p := payloadOf(source)
	if want := mustKeys(t, testKey).Hash(e.ns, "twin-1", p); !bytes.Equal(row.Hash, want) {
		t.Fatalf("stored hash is not the keyed hash of the Secret: the test would prove nothing")
	}
	encoded, _ := json.Marshal(p.Data)
	guesses := map[string][]byte{
		"sha256(value)":          sha256Sum([]byte(plain["value"])),
		"sha256(data as JSON)":   sha256Sum(encoded),
		"sha256(name and value)": sha256Sum([]byte(e.ns + "/twin-1/k=" + plain["value"])),
	}
	for range 3 {
		guess := make([]byte, 32)
		_, _ = rand.Read(guess)
		g := base64.RawURLEncoding.EncodeToString(guess)[:32]
		guesses["HMAC under a guessed key"] = mustKeys(t, g).Hash(e.ns, "twin-1", p)
		for what, h := range guesses {
			if bytes.Equal(row.Hash, h) {
				t.Errorf("the stored hash equals %s: a guess can be confirmed without the key", what)
			}
		}
	}
	// Equal content under two names does not show as equal hashes.
	if bytes.Equal(row.Hash, e.readRow("twin-2").Hash) {
		t.Error("two Secrets with equal content have equal stored hashes")
	}
}

func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// dumpDatabase returns every row of every table in the public schema as
// text, as a database reader (pg_dump, a backup) sees it; bytea shows as
// hex.
func (e *syncEnv) dumpDatabase() string {
	e.t.Helper()
	ctx := e.t.Context()
	conn := e.dbConn()
	rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name`)
	if err != nil {
		e.t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		e.t.Fatal(err)
	}
	var out strings.Builder
	for _, table := range tables {
		rows, err := conn.Query(ctx, `SELECT t::text FROM `+pgx.Identifier{table}.Sanitize()+` AS t`)
		if err != nil {
			e.t.Fatal(err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			e.t.Fatal(err)
		}
		fmt.Fprintf(&out, "%s:\n%s\n", table, strings.Join(lines, "\n"))
	}
	return out.String()
}
