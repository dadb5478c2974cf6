package main

// The leader: it watches the labelled Secrets of its cluster and writes
// each change, sealed, to the database.

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// leaderLoop watches labelled Secrets and writes each change to the
// database. A watch (informer) makes it prompt; the full reconcile every
// TICK_SECONDS re-reads the database's row states, so a row changed or lost
// behind its back is rewritten, and a deletion missed while it was down
// becomes a tombstone.
type leaderLoop struct {
	loopDeps
	// claim is the writer claim under which every write is made (fenced).
	claim  Claim
	passes passRunner
	rand   io.Reader
	now    func() time.Time

	sources *secretCache // the labelled Secrets, watched

	mu    sync.Mutex
	dirty map[ObjectKey]struct{}
	wake  chan struct{}
	// sourceChanges counts the labelled Secrets' changes (markDirty).
	sourceChanges atomic.Uint64
	// settled is what had changed, Secrets, rows and namespaces selected,
	// when the last full pass that completed started (nil: none yet); see
	// reconcileFullFrom.
	settled *changeCounts

	// known mirrors the stored rows: what was last read or written, kept
	// up to date by the full pass's digests (digest.go).
	known *rowIndex
	// refused holds the keyed hash of each Secret that could not be
	// sealed, so that it is reported once per content, not on every pass.
	refused map[ObjectKey][]byte
	// verifyAfter and sealAfter are where the next pass's verification
	// starts (verify.go): the row after which it opens rows, the bucket
	// after which it compares ciphertexts' hashes.
	verifyAfter ObjectKey
	sealAfter   int64
	// checks delivers the verification of the rows a full pass picked,
	// which runs in a goroutine of its own (startChecks); checking is
	// true until the loop has taken it.
	checks   chan rowChecks
	checking bool
	// loopCtx is run's context, which outlives each pass's: the
	// verification started by one runs under it.
	loopCtx context.Context
	// held is how many deletes the last full pass held back (guardDeletes).
	held int
	// credentials holds the UID of each labelled Secret of a type that is
	// never synced, so that each is reported once.
	credentials map[ObjectKey]types.UID
	// foreign holds the live rows written by another cluster that this
	// leader does not take over (it has no Secret for them, or a copy not
	// yet at the row's version), so that each is reported once.
	foreign map[ObjectKey]int64
	// inherited holds the version of each copy that this cluster held,
	// as a standby, when it took the writer claim over: those rows are
	// this writer's, so deleting such a copy before the first full pass
	// took its row over still propagates (see owns).
	inherited map[ObjectKey]int64
	// hint: send the PostgreSQL wake-up hint after each write (PG_NOTIFY,
	// until the database turns out not to support it).
	hint bool
}

func newLeaderLoop(d loopDeps, claim Claim) *leaderLoop {
	return &leaderLoop{
		loopDeps:    d,
		claim:       claim,
		foreign:     map[ObjectKey]int64{},
		passes:      newPassRunner(d),
		rand:        rand.Reader,
		now:         time.Now,
		dirty:       map[ObjectKey]struct{}{},
		wake:        make(chan struct{}, 1),
		known:       newRowIndex(),
		refused:     map[ObjectKey][]byte{},
		checks:      make(chan rowChecks, 1),
		credentials: map[ObjectKey]types.UID{},
		hint:        d.cfg.PgNotify,
	}
}

func (l *leaderLoop) enqueue(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if s, ok := obj.(*cachedSecret); ok {
		l.markDirty(s.key())
	}
}

// markDirty has the next incremental pass reconcile key.
func (l *leaderLoop) markDirty(key ObjectKey) {
	l.mu.Lock()
	l.dirty[key] = struct{}{}
	l.mu.Unlock()
	l.sourceChanges.Add(1)
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// startWatch fills the cache of labelled Secrets; every change to one
// marks it dirty.
func (l *leaderLoop) startWatch(ctx context.Context) (err error) {
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    l.enqueue,
		UpdateFunc: func(_, obj any) { l.enqueue(obj) },
		DeleteFunc: l.enqueue,
	}
	l.sources, err = startSecretCache(ctx, l.watches(), l.cfg, l.cfg.selector, handler, l.keys, []string{l.keys.ID()})
	return err
}

func (l *leaderLoop) run(ctx context.Context) error {
	l.loopCtx = ctx
	// The first full pass's database digests are read while the cache
	// fills: with the database in another region, its round trips would
	// otherwise come after the list of every labelled Secret.
	first := digestsAhead(ctx, l.store, l.known)
	if err := l.startWatch(ctx); err != nil {
		return shutdownOr(ctx, err)
	}
	l.log.WithField("cluster", l.cfg.ClusterName).Info("leader: watching labelled Secrets")
	tick := time.NewTicker(l.cfg.Tick())
	defer tick.Stop()
	// full: run a full pass now, reading the database's digests in it.
	// The ticks' full passes read them beforehand instead (ahead), while
	// the watch's changes go on being written, and run once they are in
	// (ready): a change made then waits for no query over every row. The
	// first pass is one of those.
	full := false
	var ahead <-chan dbDigests
	db := <-first
	ready := &db
	backoff := time.Second
	for {
		var err error
		if full || ready != nil {
			err = l.passes.run(ctx, "full", func(ctx context.Context) (bool, error) { return l.reconcileFullFrom(ctx, ready) })
			full, ready = err != nil, nil
		} else {
			// On error the keys go back to the dirty set.
			err = l.passes.run(ctx, "incremental", l.reconcileDirty)
		}
		if errors.Is(err, errFenced) {
			return err
		}
		// While failing (database down), wait for the retry timer rather
		// than retrying on every watch event.
		var retry <-chan time.Time
		wake := l.wake
		if err != nil {
			retry, wake = time.After(backoff), nil
			backoff = min(2*backoff, l.cfg.Tick())
		} else {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-l.cfg.namespaces.changes():
			// A namespace gained or lost NAMESPACE_SELECTOR's labels.
			full = true
		case <-tick.C:
			if ahead == nil && !full {
				ahead = digestsAhead(ctx, l.store, l.known)
			}
		case db := <-ahead:
			ahead, ready = nil, &db
		case c := <-l.checks:
			// Rows found damaged are rewritten by the incremental
			// pass that follows (applyChecks marks them dirty).
			l.checking = false
			if c.err != nil {
				l.log.WithError(c.err).Warn("verification of stored rows interrupted: the next full pass goes on")
			}
			l.metrics.unverified.Sub(float64(l.applyChecks(c)))
		case <-retry:
		case <-wake:
			// Let a burst of events (a kubectl apply of many Secrets)
			// arrive, so that it becomes one transaction.
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// reconcileFull compares every labelled Secret and every stored row.
func (l *leaderLoop) reconcileFull(ctx context.Context) (idle bool, err error) {
	return l.reconcileFullFrom(ctx, nil)
}

// reconcileFullFrom is reconcileFull with the database's digests read
// beforehand (digestsAhead), or read now if db is nil.
func (l *leaderLoop) reconcileFullFrom(ctx context.Context, db *dbDigests) (idle bool, err error) {
	maxVersion, buckets, err := l.known.refreshAt(ctx, l.store, db)
	if err != nil {
		return false, err
	}
	l.metrics.dbVersion.Set(float64(maxVersion))
	if err := l.verify(ctx, maxVersion); err != nil {
		return false, err
	}
	// A pass compares each Secret's cached hash with its row's: what it
	// finds to write depends on the Secrets, the rows and the namespaces
	// synced (NAMESPACE_SELECTOR) only, so when none changed since the
	// last pass that completed started, this one would find what that one
	// left, nothing. Read before the Secrets are listed: a change
	// meanwhile makes the next pass compare. At N = 100,000 the
	// comparison was a tenth of the leader's CPU in an initial sync, for
	// the idle passes that run while followers apply.
	now := changeCounts{sources: l.sourceChanges.Load(), rows: l.known.changes, namespaces: l.cfg.namespaces.changeCount()}
	if l.settled != nil && *l.settled == now {
		l.log.WithField("buckets_read", buckets).Debug("full pass: no Secret, row or namespace selected changed since the last")
		return false, nil
	}
	l.settled = nil
	// Events that arrive from now on are handled after this pass too,
	// which is harmless: an unchanged Secret writes nothing.
	// A fresh map: the cache's first fill marks every Secret dirty, and a
	// cleared map would keep that size.
	l.mu.Lock()
	l.dirty = map[ObjectKey]struct{}{}
	l.mu.Unlock()
	// Every labelled Secret, with the cached Secret in hand, then every
	// row whose Secret is not (a tombstone to write, or not this
	// leader's): one lookup per Secret and one per row, where looking each
	// key up on both sides took twice as long (an idle pass at N = 100,000
	// is that loop). A Secret deleted in between may come twice (stale,
	// then gone): the write of stale content finds it gone when it reads
	// it (complete), and its watch event comes next anyway.
	sources := l.sources.list()
	// When every row has its Secret, there is no row without one to look
	// for. Looking each row up in the cache (twice: rowChanges counts,
	// then makes) was 4% of the leader's CPU in an initial sync at
	// N = 100,000, which spans eleven passes.
	withRow := 0 // of the Secrets, how many have a row
	for _, s := range sources {
		if _, ok := l.known.rows[s.key()]; ok {
			withRow++
		}
	}
	keys := func(yield func(ObjectKey, *cachedSecret) bool) {
		for _, s := range sources {
			if !yield(s.key(), l.syncableSource(s)) {
				return
			}
		}
		if withRow == len(l.known.rows) {
			return
		}
		for k := range l.known.rows {
			if l.sources.get(k) == nil && !yield(k, nil) {
				return
			}
		}
	}
	l.log.WithFields(logrus.Fields{"secrets": len(sources), "rows": len(l.known.rows), "buckets_read": buckets}).Debug("full pass")
	if err := l.sync(ctx, "full", keys); err != nil {
		return false, err
	}
	l.reportForeign()
	l.settled = &now
	return false, nil
}

// changeCounts are the counts of changes to the labelled Secrets, the
// rows and the namespaces selected, at one time.
type changeCounts struct{ sources, rows, namespaces uint64 }

// reportForeign reports, once each, the live rows of other clusters that
// this leader leaves as they are (see rowChanges), and counts them in the
// foreign_rows metric.
func (l *leaderLoop) reportForeign() {
	now := map[ObjectKey]int64{}
	for k, row := range l.known.rows {
		if row.Tombstone || row.SourceCluster == l.claim.Holder {
			continue
		}
		now[k] = row.Version
		if l.foreign[k] == row.Version {
			continue
		}
		reason := "this cluster has no Secret of that name (not labelled, or not applied here while on standby)"
		if s := l.sources.get(k); s != nil {
			reason = fmt.Sprintf("this cluster's copy is at version %d, older than the row's: it is taken over once its copy is current", s.version)
		}
		l.log.WithFields(logrus.Fields{"namespace": k.Namespace, "name": k.Name, "version": row.Version, "source": row.SourceCluster}).
			Warn("row of another cluster kept as it is, never deleted from here: " + reason)
	}
	l.foreign = now
	l.metrics.foreignRows.Set(float64(len(now)))
}

// reconcileDirty writes the Secrets that changed since the last pass.
func (l *leaderLoop) reconcileDirty(ctx context.Context) (idle bool, err error) {
	l.mu.Lock()
	keys := make([]ObjectKey, 0, len(l.dirty))
	for k := range l.dirty {
		keys = append(keys, k)
	}
	clear(l.dirty)
	l.mu.Unlock()
	if len(keys) == 0 {
		return true, nil
	}
	if err := l.sync(ctx, "incremental", withSource(slices.Values(keys), l.source)); err != nil {
		l.mu.Lock()
		for _, k := range keys {
			l.dirty[k] = struct{}{}
		}
		l.mu.Unlock()
		return false, err
	}
	return false, nil
}

// sync writes the rows of keys whose content differs from what is stored.
func (l *leaderLoop) sync(ctx context.Context, kind string, keys iter.Seq2[ObjectKey, *cachedSecret]) error {
	cluster := l.claim.Holder
	changes := l.guardDeletes(kind, rowChanges(keys, l.known.rows, l.keys, l.owner(), l.now()))
	seal := func(version int64, c *Change) ([]byte, error) {
		b := Binding{Namespace: c.Namespace, Name: c.Name, Version: version, SourceCluster: cluster}
		ciphertext, err := l.keys.Seal(l.rand, b, c.Payload)
		c.Sealed, c.SealedSize = md5.Sum(ciphertext), int64(len(ciphertext))
		return ciphertext, err
	}
	var written int
	var version int64
	// One transaction per chunk, each with the data of its Secrets only:
	// what is held at once is bounded by bytes. The next chunk's Secrets
	// are read from the API server while this one is sealed and written.
	chunks := withLeadChunk(writeChunks(changes))
	reads := l.readAhead(ctx, chunks)
	defer reads.stop()
	for n, chunk := range chunks {
		live, err := reads.next()
		if err != nil {
			return err
		}
		chunk = l.complete(chunk, live)
		chunk = l.sealable(chunk)
		if len(chunk) == 0 {
			continue
		}
		if version, err = l.store.Write(ctx, l.claim, l.keys.ID(), chunk, seal); err != nil {
			return fmt.Errorf("write %d rows to the database: %w", len(chunk), err)
		}
		written += len(chunk)
		for i := range chunk {
			c := &chunk[i]
			l.known.set(c.ObjectKey, RowState{Hash: c.Hash, Tombstone: c.Payload.Deleted, SourceCluster: cluster, KeyID: l.keys.ID(), Version: c.Version,
				Size: c.SealedSize, Sealed: c.Sealed, SealedKnown: true})
			l.log.WithFields(logrus.Fields{
				"namespace": c.Namespace, "name": c.Name, "tombstone": c.Payload.Deleted, "version": c.Version,
			}).Info("stored")
			// Sealed and stored: let it go (a first pass holds 100,000
			// changes until its last transaction).
			c.Payload = nil
		}
		// A pass of many transactions wakes the followers after its first
		// too: they page through what is written while the rest is.
		if n == 0 && len(chunks) > 1 {
			l.wakeFollowers(ctx, version)
		}
	}
	if written == 0 {
		return nil
	}
	l.metrics.rowsWritten.Add(float64(written))
	l.metrics.cursor.Set(float64(version))
	l.wakeFollowers(ctx, version)
	l.log.WithFields(logrus.Fields{"rows": written, "kind": kind, "version": version}).Debug("write done")
	return nil
}

// leadChunk bounds the first transaction of a pass that writes more
// rows than twice that: the followers are woken after it (sync), so they
// start applying while the rest is written. A full first chunk had them
// wait until 2,000 Secrets were read from the API server, sealed and sent,
// 0.7 s of a 10,000-Secret initial sync with the database 100 ms away.
const leadChunk = 200

// withLeadChunk splits the first of chunks at leadChunk rows, if it holds
// more than twice that.
func withLeadChunk(chunks [][]Change) [][]Change {
	if len(chunks) == 0 || len(chunks[0]) <= 2*leadChunk {
		return chunks
	}
	first := chunks[0]
	return append([][]Change{first[:leadChunk:leadChunk], first[leadChunk:]}, chunks[1:]...)
}

// wakeFollowers sends the PostgreSQL wake-up hint for version, if on. Best
// effort: the rows are committed, and followers poll anyway.
func (l *leaderLoop) wakeFollowers(ctx context.Context, version int64) {
	if !l.hint {
		return
	}
	if err := l.store.Notify(ctx, version); hintUnsupported(err) {
		l.hint = false
		l.log.Info("the database has no NOTIFY: followers find changes by polling")
	} else if err != nil {
		l.log.WithError(err).Debug("wake-up hint not sent")
	}
}

// liveReads reads, in a goroutine of its own, the live Secrets of each
// chunk's changes that the cache keeps without their data (Change.Stripped),
// one chunk ahead of the writes.
type liveReads struct {
	results chan liveRead
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
}

type liveRead struct {
	live map[ObjectKey]liveSecret
	err  error
}

// readAhead starts reading the live Secrets of chunks, in order.
func (l *leaderLoop) readAhead(ctx context.Context, chunks [][]Change) *liveReads {
	// The chunks are only read, here and by the loop: complete() copies
	// what it changes.
	ctx, cancel := context.WithCancel(ctx)
	// Unbuffered: the goroutine holds the next chunk's payloads until the
	// loop takes them, and reads no further, so that two chunks at most
	// are in memory (this one, being written, and the next).
	r := &liveReads{results: make(chan liveRead), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		// next() then says that the reads stopped (the pass's context
		// ended), rather than waiting for a chunk that never comes.
		defer close(r.results)
		for _, chunk := range chunks {
			var want []ObjectKey
			for i := range chunk {
				if chunk[i].Stripped {
					want = append(want, chunk[i].ObjectKey)
				}
			}
			var res liveRead
			if len(want) > 0 {
				res.live, res.err = readLive(ctx, l.client, l.cfg.selector, want, l.sources.count)
			}
			select {
			case r.results <- res:
			case <-ctx.Done():
				return
			}
			if res.err != nil {
				return
			}
		}
	}()
	return r
}

// next returns the next chunk's live Secrets.
func (r *liveReads) next() (map[ObjectKey]liveSecret, error) {
	res, ok := <-r.results
	if !ok {
		return nil, fmt.Errorf("live reads stopped: %w", context.Cause(r.ctx))
	}
	return res.live, res.err
}

// stop ends the reads and waits for their goroutine.
func (r *liveReads) stop() {
	r.cancel()
	<-r.done
}

// complete returns chunk's changes with those of Secrets that the cache
// keeps without their data (Change.Stripped) filled from live, the live
// Secrets' payloads, and their keyed hashes. A Secret gone or unlabelled
// since is left to the watch event that says so, and one whose live
// content is what its row holds is dropped. A live Secret still at the
// resourceVersion the cache hashed keeps that hash, which rowChange has
// compared already: in a first pass that is every Secret, and hashing each
// again was a twentieth of the leader's CPU. chunk itself is not changed
// (readAhead reads it meanwhile).
func (l *leaderLoop) complete(chunk []Change, live map[ObjectKey]liveSecret) []Change {
	out := make([]Change, 0, len(chunk))
	for _, c := range chunk {
		if c.Stripped {
			s, ok := live[c.ObjectKey]
			if !ok {
				continue
			}
			c.Payload, c.Stripped = s.payload, false
			if c.HashedAt == "" || c.HashedAt != s.resourceVersion {
				c.Hash = l.keys.Hash(c.Namespace, c.Name, c.Payload)
				row, ok := l.known.rows[c.ObjectKey]
				if ok && !c.Force && !row.Tombstone && hmac.Equal(row.Hash, c.Hash) {
					continue
				}
			}
			c.HashedAt = ""
		}
		out = append(out, c)
	}
	return out
}

// deleteGuardMin is how many deletes a pass may always make: a few Secrets
// deleted or unlabelled on purpose propagate at once, whatever the share.
const deleteGuardMin = 10

// deletesAllowed reports whether a pass may turn deletes of this leader's
// live rows into tombstones: at most deleteGuardMin, or at most percent of
// the live rows. More looks like a mistake (a LABEL_SELECTOR or NAMESPACES
// typo, a kubeconfig of the wrong cluster) that would delete every copy
// in every region.
func deletesAllowed(deletes, live, percent int) bool {
	return deletes <= deleteGuardMin || deletes*100 <= percent*live
}

// guardDeletes drops every tombstone of a pass that deletes more than
// deletesAllowed allows, and says so: an error log, the deletes_held
// metric and a failing /readyz, until the Secrets come back or the
// operator allows the deletes with DELETE_GUARD_PERCENT=100. Tombstones
// that only move to the current key delete nothing and always pass. A
// full pass sets what is held; an incremental one may only add to it.
func (l *leaderLoop) guardDeletes(kind string, changes []Change) []Change {
	deletes, live := 0, 0
	for _, c := range changes {
		if row, ok := l.known.rows[c.ObjectKey]; c.Payload.Deleted && ok && !row.Tombstone {
			deletes++
		}
	}
	if deletes > 0 {
		o := l.owner()
		for k, row := range l.known.rows {
			if o.owns(k, row) && !row.Tombstone {
				live++
			}
		}
	}
	allowed := deletesAllowed(deletes, live, l.cfg.DeleteGuard)
	held := 0
	if !allowed {
		held = deletes
	}
	if kind == "full" || held > l.held {
		if held != l.held && held > 0 {
			l.log.WithFields(logrus.Fields{"deletes": deletes, "synced": live, "DELETE_GUARD_PERCENT": l.cfg.DeleteGuard}).
				Error("holding deletes back: this pass would delete more of the synced Secrets than DELETE_GUARD_PERCENT allows " +
					"(a LABEL_SELECTOR, NAMESPACES or KUBECONFIG mistake?); nothing is deleted until the Secrets are back, " +
					"or until the leader runs with DELETE_GUARD_PERCENT=100")
		} else if held == 0 && l.held > 0 {
			l.log.Info("no deletes held back any more")
		}
		l.held = held
		l.metrics.holdDeletes(held)
	}
	if allowed {
		return changes
	}
	return slices.DeleteFunc(changes, func(c Change) bool {
		row, ok := l.known.rows[c.ObjectKey]
		return c.Payload.Deleted && ok && !row.Tombstone
	})
}

// source is the labelled Secret key, or nil when there is none that may be
// synced: a Secret of a type that holds this cluster's credentials
// (service account and bootstrap tokens) counts as not labelled, so its row,
// if an earlier version stored one, becomes a tombstone. Each such Secret
// is reported once (a log line, a Warning Event, row_errors_total{reason=
// "credentials"}).
func (l *leaderLoop) source(key ObjectKey) *cachedSecret {
	return l.syncableSource(l.sources.get(key))
}

// syncableSource is source for the cached Secret s (nil for none).
func (l *leaderLoop) syncableSource(s *cachedSecret) *cachedSecret {
	if s == nil || s.syncable() {
		return s
	}
	key := s.key()
	if l.credentials[key] != s.uid {
		l.credentials[key] = s.uid
		l.metrics.rowErrors.WithLabelValues("credentials").Inc()
		l.log.WithFields(logrus.Fields{"namespace": key.Namespace, "name": key.Name, "type": s.typ, "reason": "credentials"}).
			Warn("Secret not synced: its type holds this cluster's own credentials, which never leave it")
		l.warn(key, "NotSynced",
			"kube-secret-sync never syncs Secrets of type %s, even when labelled: they are this cluster's credentials", s.typ)
	}
	return nil
}

// warn records a Warning Event on the labelled Secret key in this cluster,
// through a reference: the Secret's data never goes near the recorder.
func (l *leaderLoop) warn(key ObjectKey, reason, format string, args ...any) {
	l.recorder.warn(l.sources.ref(key), reason, "Sync", format, args...)
}

// sealable drops the changes whose Secret cannot be sealed faithfully (a
// label, annotation or key that is not valid UTF-8, or a Secret too large
// to store), so that one such Secret never fails the transaction of the
// others. Each is reported once per content: a log line, a Warning Event on
// the Secret and row_errors_total{reason="invalid"}. Its stored row stays
// as it was, so followers keep the last copy that could be stored, and the
// Secret is tried again when it changes.
func (l *leaderLoop) sealable(changes []Change) []Change {
	return slices.DeleteFunc(changes, func(c Change) bool {
		if c.Payload.Deleted {
			delete(l.refused, c.ObjectKey)
			return false
		}
		if refused, ok := l.refused[c.ObjectKey]; ok && hmac.Equal(refused, c.Hash) {
			return true
		}
		err := CheckSealable(c.Payload)
		if err == nil {
			delete(l.refused, c.ObjectKey)
			return false
		}
		l.refused[c.ObjectKey] = c.Hash
		l.metrics.rowErrors.WithLabelValues("invalid").Inc()
		l.log.WithFields(logrus.Fields{"namespace": c.Namespace, "name": c.Name, "reason": "invalid"}).WithError(err).
			Error("Secret not stored: it cannot be sealed faithfully; fix it at the source")
		l.warn(c.ObjectKey, "NotSynced",
			"kube-secret-sync did not store this Secret, so no other cluster gets this version of it: %v", err)
		return true
	})
}

// owner is whom a pass writes for: the writer's cluster, and the rows it
// inherited when it took the claim over (leaderLoop.inherited).
type owner struct {
	cluster   string
	inherited map[ObjectKey]int64
}

func (l *leaderLoop) owner() owner { return owner{l.claim.Holder, l.inherited} }

// owns reports whether the row of key is the writer's to tombstone: one
// it wrote, or one it inherited, still at the version that its cluster's
// copy had then.
func (o owner) owns(key ObjectKey, row RowState) bool {
	if row.SourceCluster == o.cluster {
		return true
	}
	v, ok := o.inherited[key]
	return ok && v == row.Version
}

// unfetched is the payload of a change until fetch reads it: shared by
// every such change (100,000 of them in a first pass), so never changed.
var unfetched = &Payload{}

// rowChanges decides the rows the leader writes for keys (duplicates
// allowed, in any order), each with its Secret (as leaderLoop.source
// returns it, nil when it is gone or not labelled): a Secret whose keyed
// hash differs from its stored row, or a tombstone, stamped now, for a row
// this writer owns whose Secret is gone. A row found damaged is rewritten
// (forced) either way. After ENCRYPTION_KEY changes, every hash differs and
// every tombstone is under an old key, so the first full pass rewrites all
// of this cluster's rows under the new key. The changes come sorted by
// namespace and name.
func rowChanges(keys iter.Seq2[ObjectKey, *cachedSecret], stored map[ObjectKey]RowState, ring *Keyring, o owner, now time.Time) []Change {
	// Counted, then made in a slice of that size: a first pass of 100,000
	// changes never holds a slice and its grown copy at once. An idle pass
	// counts none and stops there.
	n := 0
	for key, s := range keys {
		if _, ok := rowChange(key, s, stored, ring, o, now); ok {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]Change, 0, n)
	for key, s := range keys {
		if c, ok := rowChange(key, s, stored, ring, o, now); ok {
			out = append(out, c)
		}
	}
	// Sorted after the fact: an idle pass of 100,000 Secrets sorts nothing.
	slices.SortFunc(out, func(a, b Change) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return slices.CompactFunc(out, func(a, b Change) bool { return a.ObjectKey == b.ObjectKey })
}

// withSource pairs each of keys with its Secret as source returns it.
func withSource(keys iter.Seq[ObjectKey], source func(ObjectKey) *cachedSecret) iter.Seq2[ObjectKey, *cachedSecret] {
	return func(yield func(ObjectKey, *cachedSecret) bool) {
		for k := range keys {
			if !yield(k, source(k)) {
				return
			}
		}
	}
}

// rowChange is the change rowChanges makes for key, whose Secret is s (nil
// for none), if any.
func rowChange(key ObjectKey, s *cachedSecret, stored map[ObjectKey]RowState, ring *Keyring, o owner, now time.Time) (Change, bool) {
	row, ok := stored[key]
	if s != nil {
		h, hashed := s.hash(ring.ID())
		if ok && !row.Tombstone && !row.Damaged && row.SourceCluster == o.cluster && hmac.Equal(row.Hash, h) {
			return Change{}, false
		}
		// A row another cluster wrote is taken over (this leader took the
		// writer claim over, or was renamed), so that deleting the Secret
		// later reaches the followers; but never from a copy that is not
		// yet at the row's version, which would write older content over
		// the newer row.
		takeover := ok && row.SourceCluster != o.cluster
		if takeover && s.managed && s.version < row.Version {
			return Change{}, false
		}
		// The cache keeps the hash, not the data: the payload is read only
		// for the Secrets written (leaderLoop.complete).
		c := Change{ObjectKey: key, Hash: h, Payload: unfetched, Force: row.Damaged || takeover, Stripped: true, Size: s.sealedSize}
		if hashed {
			c.HashedAt = s.resourceVersion
		}
		return c, true
	}
	// Only the writer's rows: a row of another cluster whose Secret this
	// cluster never had is not ours to delete.
	if ok && o.owns(key, row) && (!row.Tombstone || row.KeyID != ring.ID() || row.Damaged) {
		p := &Payload{Deleted: true, UpdatedAt: now.UTC()}
		return Change{ObjectKey: key, Hash: ring.Hash(key.Namespace, key.Name, p), Payload: p, Force: row.Damaged}, true
	}
	return Change{}, false
}
