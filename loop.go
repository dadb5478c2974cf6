package main

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// shutdownOr returns err, or nil when it is only the consequence of ctx
// ending (a shutdown while the watches were still filling).
func shutdownOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// pullPage is how many rows a follower reads per query.
const pullPage = 500

// ---------------------------------------------------------------------
// Leader
// ---------------------------------------------------------------------

// leaderLoop watches labelled Secrets and writes each change to the
// database. A watch (informer) makes it prompt; the full reconcile every
// TICK_SECONDS re-reads the database's row states, so a row changed or lost
// behind its back is rewritten, and a deletion missed while it was down
// becomes a tombstone.
type leaderLoop struct {
	cfg     *Config
	log     *logrus.Entry
	store   *Store
	client  kubernetes.Interface
	metrics *metrics
	rand    io.Reader

	sources *secretCache // the labelled Secrets, watched

	mu    sync.Mutex
	dirty map[ObjectKey]struct{}
	wake  chan struct{}

	// known mirrors the stored rows: what was last read or written.
	known map[ObjectKey]RowState
	// hint: send the PostgreSQL wake-up hint after each write (PG_NOTIFY,
	// until the database turns out not to support it).
	hint bool
}

func newLeaderLoop(cfg *Config, log *logrus.Entry, store *Store, client kubernetes.Interface, m *metrics) *leaderLoop {
	return &leaderLoop{
		cfg: cfg, log: log, store: store, client: client, metrics: m, rand: rand.Reader,
		dirty: map[ObjectKey]struct{}{},
		wake:  make(chan struct{}, 1),
		known: map[ObjectKey]RowState{},
		hint:  cfg.PgNotify,
	}
}

func (l *leaderLoop) enqueue(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	l.mu.Lock()
	l.dirty[ObjectKey{s.Namespace, s.Name}] = struct{}{}
	l.mu.Unlock()
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
	l.sources, err = startSecretCache(ctx, l.client, l.cfg, l.cfg.selector, handler)
	return err
}

func (l *leaderLoop) run(ctx context.Context) error {
	if err := l.startWatch(ctx); err != nil {
		return shutdownOr(ctx, err)
	}
	l.log.WithField("cluster", l.cfg.ClusterName).Info("leader: watching labelled Secrets")
	tick := time.NewTicker(l.cfg.Tick())
	defer tick.Stop()
	full := true
	backoff := time.Second
	for {
		var err error
		if full {
			err = l.reconcileFull(ctx)
			full = err != nil
		} else {
			// On error the keys go back to the dirty set.
			err = l.reconcileDirty(ctx)
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
		case <-tick.C:
			full = true
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
func (l *leaderLoop) reconcileFull(ctx context.Context) (err error) {
	start := time.Now()
	defer func() { l.metrics.observe("full", start, err) }()
	ctx, cancel := context.WithTimeout(ctx, l.cfg.passTimeout())
	defer cancel()
	states, err := l.store.States(ctx)
	if err != nil {
		l.log.WithError(err).Error("full reconcile: cannot read the database")
		return err
	}
	l.known = states
	// Events that arrive from now on are handled after this pass too,
	// which is harmless: an unchanged Secret writes nothing.
	l.mu.Lock()
	clear(l.dirty)
	l.mu.Unlock()
	var keys []ObjectKey
	for _, s := range l.sources.list() {
		keys = append(keys, ObjectKey{s.Namespace, s.Name})
	}
	for k := range states {
		keys = append(keys, k)
	}
	l.log.WithFields(logrus.Fields{"secrets": len(keys) - len(states), "rows": len(states)}).Debug("full pass")
	return l.sync(ctx, "full", keys)
}

func (l *leaderLoop) reconcileDirty(ctx context.Context) (err error) {
	l.mu.Lock()
	keys := make([]ObjectKey, 0, len(l.dirty))
	for k := range l.dirty {
		keys = append(keys, k)
	}
	clear(l.dirty)
	l.mu.Unlock()
	if len(keys) == 0 {
		return nil
	}
	start := time.Now()
	defer func() { l.metrics.observe("incremental", start, err) }()
	ctx, cancel := context.WithTimeout(ctx, l.cfg.passTimeout())
	defer cancel()
	if err := l.sync(ctx, "incremental", keys); err != nil {
		l.mu.Lock()
		for _, k := range keys {
			l.dirty[k] = struct{}{}
		}
		l.mu.Unlock()
		return err
	}
	return nil
}

// sync writes the rows of keys whose content differs from what is stored.
func (l *leaderLoop) sync(ctx context.Context, kind string, keys []ObjectKey) error {
	changes := l.changes(keys)
	if len(changes) == 0 {
		return nil
	}
	cluster := l.cfg.ClusterName
	seal := func(version int64, c *Change) ([]byte, error) {
		b := Binding{Namespace: c.Namespace, Name: c.Name, Version: version, SourceCluster: cluster}
		return l.cfg.keys.Seal(l.rand, b, c.Payload)
	}
	version, err := l.store.Write(ctx, cluster, l.cfg.keys.ID(), changes, seal)
	if err != nil {
		l.log.WithError(err).WithField("rows", len(changes)).Error("write to the database failed; will retry")
		return err
	}
	for _, c := range changes {
		l.known[c.ObjectKey] = RowState{Hash: c.Hash, Tombstone: c.Payload.Deleted, SourceCluster: cluster, KeyID: l.cfg.keys.ID()}
		l.log.WithFields(logrus.Fields{
			"namespace": c.Namespace, "name": c.Name, "tombstone": c.Payload.Deleted, "version": c.Version,
		}).Info("stored")
	}
	l.metrics.rowsWritten.Add(float64(len(changes)))
	l.metrics.cursor.Set(float64(version))
	if l.hint {
		// Best effort: the rows are committed, and followers poll anyway.
		if err := l.store.Notify(ctx, version); hintUnsupported(err) {
			l.hint = false
			l.log.Info("the database has no NOTIFY: followers find changes by polling")
		} else if err != nil {
			l.log.WithError(err).Debug("wake-up hint not sent")
		}
	}
	l.log.WithFields(logrus.Fields{"rows": len(changes), "kind": kind, "version": version}).Debug("write done")
	return nil
}

// changes returns the rows to write for keys: a Secret whose keyed hash
// differs from its stored row, or a tombstone for a row this cluster wrote
// whose Secret is gone or no longer labelled. After ENCRYPTION_KEY changes,
// every hash differs and every tombstone is under an old key, so the first
// full pass rewrites all of this cluster's rows under the new key.
func (l *leaderLoop) changes(keys []ObjectKey) []Change {
	slices.SortFunc(keys, func(a, b ObjectKey) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	keys = slices.Compact(keys)
	var out []Change
	for _, key := range keys {
		stored, ok := l.known[key]
		if s := l.sources.get(key); s != nil {
			p := payloadOf(s)
			h := l.cfg.keys.Hash(key.Namespace, key.Name, p)
			if ok && !stored.Tombstone && hmac.Equal(stored.Hash, h) {
				continue
			}
			out = append(out, Change{ObjectKey: key, Hash: h, Payload: p})
			continue
		}
		// Only this cluster's rows: a second leader's Secrets are not ours
		// to delete.
		if ok && stored.SourceCluster == l.cfg.ClusterName && (!stored.Tombstone || stored.KeyID != l.cfg.keys.ID()) {
			p := &Payload{Deleted: true, UpdatedAt: time.Now().UTC()}
			out = append(out, Change{ObjectKey: key, Hash: l.cfg.keys.Hash(key.Namespace, key.Name, p), Payload: p})
		}
	}
	return out
}

// ---------------------------------------------------------------------
// Follower
// ---------------------------------------------------------------------

// followerLoop pulls the rows changed since its cursor every POLL_SECONDS
// and applies them; every TICK_SECONDS it compares every row with every
// managed copy, which repairs drift and retries rows that failed.
type followerLoop struct {
	cfg      *Config
	log      *logrus.Entry
	store    *Store
	client   kubernetes.Interface
	metrics  *metrics
	writer   *secretWriter
	cursors  *cursorStore
	recorder record.EventRecorder

	// copies is the watched cache of managed copies, read by full passes.
	copies *secretCache

	cursor Cursor
	// wake is signalled by the PostgreSQL wake-up hint (PG_NOTIFY).
	wake chan struct{}
	// reported remembers conflicts and rejected rows already reported per
	// row version, so each is reported once, not on every pass. Rows are
	// applied concurrently, hence the lock.
	reportedMu sync.Mutex
	reported   map[ObjectKey]int64
}

func newFollowerLoop(cfg *Config, log *logrus.Entry, store *Store, client kubernetes.Interface, m *metrics, recorder record.EventRecorder) *followerLoop {
	return &followerLoop{
		cfg: cfg, log: log, store: store, client: client, metrics: m, recorder: recorder,
		writer:   &secretWriter{client: client, createNamespaces: cfg.CreateNamespaces, log: log},
		cursors:  &cursorStore{client: client, namespace: cfg.PodNamespace, name: cfg.LeaseName + stateSuffix},
		reported: map[ObjectKey]int64{},
		wake:     make(chan struct{}, 1),
	}
}

// startWatch fills the cache of managed copies.
func (f *followerLoop) startWatch(ctx context.Context) (err error) {
	managed := labels.SelectorFromSet(labels.Set{managedLabel: "true"})
	f.copies, err = startSecretCache(ctx, f.client, f.cfg, managed, nil)
	return err
}

func (f *followerLoop) run(ctx context.Context) error {
	if err := f.startWatch(ctx); err != nil {
		return shutdownOr(ctx, err)
	}
	// Without its cursor the follower would re-read everything; keep
	// trying, the API server may be coming up.
	for {
		c, err := f.cursors.load(ctx)
		if err == nil {
			f.cursor = c
			break
		}
		f.log.WithError(err).Error("cannot read cursor; retrying")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(f.cfg.Poll()):
		}
	}
	f.metrics.cursor.Set(float64(f.cursor.Version))
	f.log.WithFields(logrus.Fields{"cluster": f.cfg.ClusterName, "cursor": f.cursor.Version, "wake_up_hint": f.cfg.PgNotify}).Info("follower: pulling rows")
	if f.cfg.PgNotify {
		go listenForHints(ctx, f.cfg.DSN, f.log, f.wake)
	}
	// A fresh follower converges with one full pass; a restarted one
	// resumes from its cursor and leaves the full pass to the first tick.
	full := f.cursor == (Cursor{})
	tick := time.NewTicker(f.cfg.Tick())
	defer tick.Stop()
	poll := time.NewTicker(f.cfg.Poll())
	defer poll.Stop()
	for {
		if full {
			f.reconcileFull(ctx)
			full = false
		} else {
			f.pull(ctx)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			full = true
		case <-poll.C:
		case <-f.wake:
		}
	}
}

// pull applies the rows after the cursor. The cursor moves past a row
// whether or not it applied: a failed row is retried by the next full
// pass, and one bad row never holds up the rows after it. A copy is
// compared with its cached state (a stale one costs a conflict and a
// retry); one not in the cache is looked up, since an unmanaged Secret of
// that name may exist.
func (f *followerLoop) pull(ctx context.Context) (err error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, f.cfg.passTimeout())
	defer cancel()
	before := f.cursor
	defer func() {
		if f.cursor != before || err != nil {
			f.metrics.observe("incremental", start, err)
		} else {
			f.metrics.beat()
		}
	}()
	for {
		rows, err := f.store.Pull(ctx, f.cursor, pullPage)
		if err != nil {
			f.log.WithError(err).Error("pull: cannot read the database")
			return err
		}
		page := make([]*Row, len(rows))
		for i := range rows {
			page[i] = &rows[i]
		}
		f.applyAll(ctx, page, func(r *Row) *corev1.Secret { return f.copies.get(r.ObjectKey) })
		if len(rows) > 0 {
			last := rows[len(rows)-1]
			f.cursor = Cursor{last.Version, last.Namespace, last.Name}
		}
		if len(rows) < pullPage {
			break
		}
	}
	return f.saveCursor(ctx, before)
}

func (f *followerLoop) saveCursor(ctx context.Context, before Cursor) error {
	if f.cursor == before {
		return nil
	}
	f.metrics.cursor.Set(float64(f.cursor.Version))
	if err := f.cursors.save(ctx, f.cursor); err != nil {
		// Not fatal: the rows are applied; a restart would re-read a few.
		f.log.WithError(err).Warn("cannot store cursor")
		return err
	}
	return nil
}

// reconcileFull compares every row with the managed copies (from the
// watched cache) and applies what differs. A copy that is already equal to
// its row (same version, same keyed hash) is not even decrypted.
func (f *followerLoop) reconcileFull(ctx context.Context) (err error) {
	start := time.Now()
	defer func() { f.metrics.observe("full", start, err) }()
	ctx, cancel := context.WithTimeout(ctx, f.cfg.passTimeout())
	defer cancel()
	// The watched cache may lag the API server by a moment: a copy seen
	// stale is applied against its cached state, and an update that loses
	// the race fails with a conflict and is retried by the next pass.
	cached := f.copies.list()
	copies := make(map[ObjectKey]*corev1.Secret, len(cached))
	for _, s := range cached {
		copies[ObjectKey{s.Namespace, s.Name}] = s
	}
	maxVersion, err := f.store.MaxVersion(ctx)
	if err != nil {
		f.log.WithError(err).Error("full reconcile: cannot read the database")
		return err
	}
	if maxVersion < f.cursor.Version {
		f.log.WithFields(logrus.Fields{"cursor": f.cursor.Version, "database": maxVersion}).
			Warn("the database's version is behind this follower's cursor (restored from a backup?): starting over from version 0")
		f.cursor = Cursor{}
	}
	before := f.cursor
	var page Cursor
	var seen int
	defer func() {
		f.log.WithFields(logrus.Fields{"rows": seen, "copies": len(copies), "cursor": f.cursor.Version}).Debug("full pass done")
	}()
	for {
		rows, err := f.store.PullHeaders(ctx, page, pullPage)
		seen += len(rows)
		if err == nil {
			err = f.applyOutOfSync(ctx, rows, copies)
		}
		if err != nil {
			f.log.WithError(err).Error("full reconcile: cannot read the database")
			return err
		}
		if len(rows) > 0 {
			last := rows[len(rows)-1]
			page = Cursor{last.Version, last.Namespace, last.Name}
		}
		if len(rows) < pullPage {
			break
		}
	}
	// The pass read every row up to page, the last one in the database's
	// order, so the cursor may move there. Versions decide, not a Go string
	// comparison, which could disagree with the database's collation.
	if page != (Cursor{}) && page.Version >= f.cursor.Version {
		f.cursor = page
	}
	return f.saveCursor(ctx, before)
}

// inSync reports whether nothing needs doing for r: a tombstone with no
// managed copy, or a copy written from this very row version whose content
// still has the row's keyed hash (no hand edits since).
func (f *followerLoop) inSync(r *Row, existing *corev1.Secret) bool {
	if !f.cfg.namespaceAllowed(r.Namespace) {
		return true
	}
	if existing == nil {
		return r.Tombstone
	}
	if r.Tombstone || appliedVersion(existing) != r.Version {
		return false
	}
	// The row's own key: a row not yet rewritten after a key rotation is
	// still in sync with its copy. A key not in the ring is not; opening
	// the row then reports it.
	h, ok := f.cfg.keys.HashFor(r.KeyID, r.Namespace, r.Name, payloadOf(existing))
	return ok && hmac.Equal(h, r.Hash)
}
