package main

// The follower: it pulls the rows that changed since its cursor, runs the
// full pass that compares every row with every managed copy, and keeps its
// cursor in its own cluster. What happens to one row is in apply.go.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
)

// pullPage is how many rows a follower reads per query.
const pullPage = 500

// fillBatchBytes bounds the ciphertexts a full pass fetches at once.
const fillBatchBytes = 16 << 20

// followerLoop pulls the rows changed since its cursor every POLL_SECONDS
// and applies them; every TICK_SECONDS it compares every row with every
// managed copy, which repairs drift and retries rows that failed.
type followerLoop struct {
	loopDeps
	passes  passRunner
	apply   *rowApplier
	cursors *cursorStore

	// copies is the watched cache of managed copies, read by full passes.
	copies *secretCache

	cursor Cursor
	// cursorAhead is the cursor when the next full pass's database
	// version was read, which a restored backup's is below.
	cursorAhead Cursor
	// rows is the index of the table's row headers (digest.go), kept by
	// the full pass and by pulls.
	rows *rowIndex
	// wake is signalled by the PostgreSQL wake-up hint (PG_NOTIFY), and
	// by a pull that moved the cursor (run).
	wake chan struct{}

	// standby: this is a leader on standby (failover.go). It skips the
	// rows it wrote itself and may adopt labelled Secrets (standbyAdopts).
	standby bool
	// promoted, closed when a standby took the writer claim, makes the
	// loop run one last full pass, the catch-up, and return.
	promoted <-chan struct{}
	// inherited is, after the catch-up, the version of each managed copy
	// that this standby's cluster holds: the rows the new writer owns.
	inherited map[ObjectKey]int64
}

func newFollowerLoop(d loopDeps) *followerLoop {
	return &followerLoop{
		loopDeps: d,
		passes:   newPassRunner(d),
		apply:    newRowApplier(d),
		rows:     newRowIndex(),
		cursors:  &cursorStore{client: d.client, namespace: d.cfg.PodNamespace, name: d.cfg.LeaseName + stateSuffix},
		wake:     make(chan struct{}, 1),
	}
}

// startWatch fills the cache of managed copies. A standby's holds the
// labelled Secrets instead: its copies, which carry the label as their
// sources do, and its former sources, which it may adopt.
func (f *followerLoop) startWatch(ctx context.Context) (err error) {
	f.copies, err = startSecretCache(ctx, f.watches(), f.cfg, copiesSelector(f.cfg, f.standby), nil, f.keys, f.keys.IDs())
	f.apply.copies = f.copies
	return err
}

// copiesSelector selects the Secrets a follower compares its rows with: its
// managed copies, or for a standby leader its cluster's labelled Secrets
// (which the writer's rows may update).
func copiesSelector(cfg *Config, standby bool) labels.Selector {
	if standby {
		return cfg.selector
	}
	return labels.SelectorFromSet(labels.Set{managedLabel: "true"})
}

func (f *followerLoop) run(ctx context.Context) error {
	if f.standby {
		f.apply.skipSource = f.cfg.ClusterName
		f.apply.writer.adopt = standbyAdopts(f.cfg)
	}
	f.apply.conflicts.start(ctx)
	// Without its cursor the follower would re-read everything; keep
	// trying, the API server may be coming up.
	for {
		c, err := f.cursors.load(ctx)
		if err == nil {
			f.cursor = c
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errBadCursor) {
			// Retrying would never help; starting over costs one full
			// pass, and the next save overwrites the garbage.
			f.log.WithError(err).Error("the cursor ConfigMap holds no valid cursor: starting over from version 0")
			f.cursor = Cursor{}
			break
		}
		f.log.WithError(err).Error("cannot read cursor; retrying")
		select {
		case <-ctx.Done():
			return nil
		case <-f.promoted:
			return nil // nothing to catch up with
		case <-time.After(f.cfg.Poll()):
		}
	}
	f.metrics.cursor.Set(float64(f.cursor.Version))
	// A fresh follower converges with one full pass, whose database
	// digests are read while the cache of copies fills: with the database
	// in another region, its round trips would otherwise come after that
	// list. A restarted one resumes from its cursor and leaves the full
	// pass to the first tick.
	var first <-chan dbDigests
	if f.cursor == (Cursor{}) {
		first = digestsAhead(ctx, f.store, f.rows)
		f.cursorAhead = f.cursor
	}
	if err := f.startWatch(ctx); err != nil {
		return shutdownOr(ctx, err)
	}
	role := "follower: pulling rows"
	if f.standby {
		role = "standby leader: pulling the writer's rows"
	}
	f.log.WithFields(logrus.Fields{"cluster": f.cfg.ClusterName, "cursor": f.cursor.Version, "wake_up_hint": f.cfg.PgNotify}).Info(role)
	if f.cfg.PgNotify {
		go listenForHints(ctx, f.cfg.DSN, f.log, f.wake)
	}
	tick := time.NewTicker(f.cfg.Tick())
	defer tick.Stop()
	poll := time.NewTicker(f.cfg.Poll())
	defer poll.Stop()
	// The ticks' full passes read the database's digests beforehand
	// (ahead), while pulls go on, and run once they are in (ready): a row
	// written then waits for no query over every row. So does a fresh
	// follower's first.
	var ahead <-chan dbDigests
	var ready *dbDigests
	full := false
	if first != nil {
		db := <-first
		ready = &db
	}
	for {
		// A failed pass is logged by passes.run, and the schedule is its
		// retry: a failed pull is repeated at the next poll, a failed full
		// pass at the next tick (a row that failed to apply is retried by
		// every full pass until it applies).
		//
		// A pull that moved the cursor wakes the loop itself: rows are
		// being written (a leader's pass of many transactions wakes
		// followers after its first and its last), so the next pull runs
		// at once, not at the next poll. A pull that finds nothing new
		// ends that.
		if full || ready != nil {
			_ = f.passes.run(ctx, "full", func(ctx context.Context) (bool, error) { return f.reconcileFullFrom(ctx, ready) })
			full, ready = false, nil
		} else if before := f.cursor; f.passes.run(ctx, "incremental", f.pull) == nil && f.cursor != before {
			select {
			case f.wake <- struct{}{}:
			default: // a hint is pending already
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-f.promoted:
			// Nothing is written meanwhile (the claim is this cluster's):
			// one full pass brings every copy to the database's version.
			_ = f.passes.run(ctx, "full", f.reconcileFull)
			f.inherited = map[ObjectKey]int64{}
			for _, s := range f.copies.list() {
				if s.managed {
					f.inherited[s.key()] = s.version
				}
			}
			return nil
		case <-f.cfg.namespaces.changes():
			// A namespace gained or lost NAMESPACE_SELECTOR's labels.
			full = true
		case <-tick.C:
			if ahead == nil {
				ahead = digestsAhead(ctx, f.store, f.rows)
				f.cursorAhead = f.cursor
			}
		case db := <-ahead:
			ahead, ready = nil, &db
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
// that name may exist. The next page is read while this one is applied.
func (f *followerLoop) pull(ctx context.Context) (idle bool, err error) {
	before := f.cursor
	batches := make(chan applyBatch, 1)
	var fetchErr error
	go func() {
		defer close(batches)
		after := f.cursor
		for {
			rows, err := f.store.Pull(ctx, after, pullPage)
			if err != nil {
				fetchErr = err
				return
			}
			page := make([]*Row, 0, len(rows))
			for i := range rows {
				f.rows.record(&rows[i])
				if r := &rows[i]; !f.apply.skips(r) && !inSync(r, f.copies.get(r.ObjectKey)) {
					page = append(page, r)
				}
			}
			b := applyBatch{rows: page}
			if len(rows) > 0 {
				last := &rows[len(rows)-1]
				after = Cursor{last.Version, last.Namespace, last.Name}
				past := after
				b.done = func() { f.cursor = past }
			}
			// Decided before the rows go to the appliers, which let
			// their ciphertexts go.
			more := morePages(rows, pullPage)
			batches <- b
			if !more {
				return
			}
		}
	}()
	f.apply.stream(ctx, batches, func(r *Row) *cachedSecret { return f.copies.get(r.ObjectKey) })
	if fetchErr != nil {
		return false, fetchErr
	}
	idle = f.cursor == before
	return idle, f.saveCursor(ctx, before)
}

// saveCursor stores the cursor if it moved since before. A failure is not
// fatal: the rows are applied, and a restart would re-read a few.
func (f *followerLoop) saveCursor(ctx context.Context, before Cursor) error {
	if f.cursor == before {
		return nil
	}
	f.metrics.cursor.Set(float64(f.cursor.Version))
	return f.cursors.save(ctx, f.cursor)
}

// reconcileFull compares every row with the managed copies (from the
// watched cache) and applies what differs. The rows are those of the
// follower's index of row headers, which the pass brings up to date by
// comparing bucket digests (digest.go): an idle pass reads a few KiB. A
// copy that is already equal to its row (same version, same keyed hash) is
// not even decrypted; only the rows out of sync have their ciphertexts
// read.
func (f *followerLoop) reconcileFull(ctx context.Context) (idle bool, err error) {
	f.cursorAhead = f.cursor
	return f.reconcileFullFrom(ctx, nil)
}

// reconcileFullFrom is reconcileFull with the database's digests read
// beforehand (digestsAhead) when f.cursor was f.cursorAhead, or read now
// if db is nil.
func (f *followerLoop) reconcileFullFrom(ctx context.Context, db *dbDigests) (idle bool, err error) {
	// The watched cache may lag the API server by a moment: a copy seen
	// stale is applied against its cached state, and an update that loses
	// the race fails with a conflict and is retried by the next pass. Each
	// row's copy is looked up in the cache itself, not in a map of every
	// copy made for the pass (100,000 inserts at N = 100,000, every tick).
	copies := f.copies.get
	maxVersion, buckets, err := f.rows.refreshAt(ctx, f.store, db)
	if err != nil {
		return false, err
	}
	f.metrics.dbVersion.Set(float64(maxVersion))
	// Against the cursor of when the counter was read: pulls since may
	// have passed it.
	if maxVersion < f.cursorAhead.Version {
		f.log.WithFields(logrus.Fields{"cursor": f.cursorAhead.Version, "database": maxVersion}).
			Warn("the database's version is behind this follower's cursor (restored from a backup?): starting over from version 0")
		f.cursor = Cursor{}
	}
	before := f.cursor
	// The row the cursor may move to: every row up to the counter is in
	// the index now. Among the rows of its version, the last by name in
	// Go's order, which may not be the database's: then the next pull
	// reads a few rows of that version again, once.
	var upTo Cursor
	var todo []*Row
	for k, st := range f.rows.rows {
		// Not past the counter: a row above it has a forged version (see
		// Store.Pull).
		if c := (Cursor{st.Version, k.Namespace, k.Name}); st.Version <= maxVersion && cursorLess(upTo, c) {
			upTo = c
		}
		// A value on the stack: only the rows out of sync are kept.
		if r := headerRow(k, &st); !f.apply.skips(&r) {
			if c := copies(k); inSync(&r, c) || f.apply.isSettled(&r, c) {
				continue
			}
			kept := r
			todo = append(todo, &kept)
		}
	}
	defer func() {
		f.log.WithFields(logrus.Fields{"rows": len(f.rows.rows), "buckets_read": buckets, "out_of_sync": len(todo), "cursor": f.cursor.Version}).Debug("full pass done")
	}()
	// Ciphertexts are read in one goroutine and applied in stream's: the
	// next batch is read while this one is applied.
	batches := make(chan applyBatch, 1)
	var fetchErr error
	go func() {
		defer close(batches)
		fetchErr = f.queueOutOfSync(ctx, todo, batches)
	}()
	f.apply.stream(ctx, batches, func(r *Row) *cachedSecret { return copies(r.ObjectKey) })
	if fetchErr != nil {
		return false, fetchErr
	}
	if upTo.Version > f.cursor.Version {
		f.cursor = upTo
	}
	return false, f.saveCursor(ctx, before)
}

// cursorLess orders cursors by version, then by name in Go's order.
func cursorLess(a, b Cursor) bool {
	return cmp.Or(cmp.Compare(a.Version, b.Version), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name)) < 0
}

// queueOutOfSync sends to batches the rows (headers) whose copy is not in
// sync, with their ciphertexts read a few MiB at a time.
func (f *followerLoop) queueOutOfSync(ctx context.Context, todo []*Row, batches chan<- applyBatch) error {
	// A row too large to open is refused without its ciphertext.
	var tooLarge []*Row
	todo = slices.DeleteFunc(todo, func(r *Row) bool {
		if r.Size > MaxCiphertextSize {
			tooLarge = append(tooLarge, r)
			return true
		}
		return false
	})
	if len(tooLarge) > 0 {
		batches <- applyBatch{rows: tooLarge}
	}
	for _, batch := range byteBatches(todo, fillBatchBytes) {
		if err := f.store.FillCiphertexts(ctx, batch); err != nil {
			return err
		}
		// A row rewritten since has no ciphertext: the next pull brings it.
		batches <- applyBatch{rows: slices.DeleteFunc(batch, func(r *Row) bool { return r.Ciphertext == nil })}
	}
	return nil
}

// errBadCursor: the cursor ConfigMap exists but holds no cursor.
var errBadCursor = errors.New("not a cursor")

// cursorStore keeps a follower's cursor in a ConfigMap of its own cluster,
// so that it survives restarts and moves with the cluster it describes.
// Followers then need no write access to the shared database.
type cursorStore struct {
	client    kubernetes.Interface
	namespace string
	name      string
	last      *corev1.ConfigMap // as last read or written, for optimistic updates
}

func (s *cursorStore) load(ctx context.Context) (Cursor, error) {
	cm, err := s.client.CoreV1().ConfigMaps(s.namespace).Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s.last = nil
		return Cursor{}, nil
	}
	if err != nil {
		return Cursor{}, fmt.Errorf("read cursor %s/%s: %w", s.namespace, s.name, err)
	}
	s.last = cm
	v, err := strconv.ParseInt(cm.Data["version"], 10, 64)
	if err != nil || v < 0 {
		return Cursor{}, fmt.Errorf("read cursor %s/%s: %w: version %q", s.namespace, s.name, errBadCursor, cm.Data["version"])
	}
	return Cursor{Version: v, Namespace: cm.Data["namespace"], Name: cm.Data["name"]}, nil
}

func (s *cursorStore) save(ctx context.Context, c Cursor) error {
	data := map[string]string{
		"version":   strconv.FormatInt(c.Version, 10),
		"namespace": c.Namespace,
		"name":      c.Name,
	}
	cms := s.client.CoreV1().ConfigMaps(s.namespace)
	for attempt := 0; ; attempt++ {
		var err error
		if s.last == nil {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: s.namespace}, Data: data}
			s.last, err = cms.Create(ctx, cm, metav1.CreateOptions{})
		} else {
			cm := s.last.DeepCopy()
			cm.Data = data
			s.last, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		}
		if err == nil {
			return nil
		}
		s.last = nil
		stale := apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) || apierrors.IsNotFound(err)
		if !stale || attempt > 0 {
			return fmt.Errorf("write cursor %s/%s: %w", s.namespace, s.name, err)
		}
		// Written by a previous holder of the Lease, or deleted by hand:
		// read it again and overwrite once.
		if _, err := s.load(ctx); err != nil {
			return err
		}
	}
}
