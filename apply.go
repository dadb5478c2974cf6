package main

// What a follower does with one row: open it, decide whether its copy is
// in sync, write it, and report what could not be applied.

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"sync"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// rowApplier applies rows to the follower's cluster and reports the ones it
// cannot apply. It holds what only that needs: the writer, the Event
// recorder, and which row versions were already reported.
type rowApplier struct {
	cfg      *Config
	keys     *Keyring
	log      *logrus.Entry
	client   kubernetes.Interface
	metrics  *metrics
	recorder *eventRecorder
	writer   *secretWriter
	// copies is the follower's watched cache of managed copies, set once
	// the watch has started; Events about a row point at its copy.
	copies *secretCache

	// reported remembers conflicts and rejected rows already reported per
	// row version, so each is reported once, not on every pass. Rows are
	// applied concurrently, hence the lock.
	reportedMu sync.Mutex
	reported   map[ObjectKey]int64

	// settled holds, per row, the version whose outcome stands until the
	// row changes: a conflict with an unmanaged Secret, a retained
	// tombstone, a row that cannot be opened, a refused rollback. A full
	// pass skips such a row without an API request or a decryption. A
	// conflict also ends when its unmanaged Secret changes or goes, which
	// a watch on that name reports (conflicts.go), or when it is handed
	// over (it shows up in the cache of copies).
	settledMu sync.Mutex
	settled   map[ObjectKey]settlement
	conflicts *conflictWatches

	// skipSource, if set, is a cluster whose rows are not applied: a
	// standby leader's own, written when it was the writer, whose Secrets
	// here are their sources.
	skipSource string
}

// settlement is a row version whose outcome stands (rowApplier.settled).
type settlement struct {
	version  int64
	conflict bool
}

func newRowApplier(d loopDeps) *rowApplier {
	return &rowApplier{
		cfg: d.cfg, keys: d.keys, log: d.log, client: d.client, metrics: d.metrics, recorder: d.recorder,
		writer:    &secretWriter{client: d.client, createNamespaces: d.cfg.CreateNamespaces, log: d.log},
		reported:  map[ObjectKey]int64{},
		settled:   map[ObjectKey]settlement{},
		conflicts: newConflictWatches(d.client),
	}
}

// settle records that r's outcome stands until the row changes (or, for a
// conflict, until the unmanaged Secret does).
func (a *rowApplier) settle(r *Row, conflict bool) {
	a.settledMu.Lock()
	a.settled[r.ObjectKey] = settlement{version: r.Version, conflict: conflict}
	a.settledMu.Unlock()
	if conflict {
		a.conflicts.watch(r.ObjectKey, a.unsettleConflict)
	}
}

// unsettleConflict ends the settled conflict of key: the next full pass
// tries its row again.
func (a *rowApplier) unsettleConflict(key ObjectKey) {
	a.settledMu.Lock()
	defer a.settledMu.Unlock()
	if a.settled[key].conflict {
		delete(a.settled, key)
	}
}

// isSettled reports whether a full pass may skip r: its version was
// settled, and, for a conflict, no managed copy has appeared since (a
// standby caches unmanaged labelled Secrets too).
func (a *rowApplier) isSettled(r *Row, existing *cachedSecret) bool {
	a.settledMu.Lock()
	defer a.settledMu.Unlock()
	s, ok := a.settled[r.ObjectKey]
	if !ok || s.version != r.Version || s.conflict && existing != nil && existing.managed {
		delete(a.settled, r.ObjectKey)
		return false
	}
	return true
}

// applyBatch is rows to apply (distinct Secrets, in any order), and what
// to do once they are applied (move the cursor past them), or nil.
type applyBatch struct {
	rows []*Row
	done func()
}

// stream applies the rows of each batch as the batches arrive, with up to
// APPLY_WORKERS API calls in flight: a create or update is a round trip to
// the API server, and one at a time would leave it idle. There is no pause
// between batches, so the caller's fetch of the next batch from the
// database overlaps the applying of this one, and no worker waits for the
// slowest row of a batch. Rows of one Secret (a row rewritten between two
// pages reads twice) are applied one after the other, in the order they
// came. A batch's done runs once its rows and those of every earlier batch
// are applied, in the order the batches came (so a cursor moves only past
// applied rows). A row's ciphertext is let go once it is applied. stream
// returns when batches is closed and every row is applied.
func (a *rowApplier) stream(ctx context.Context, batches <-chan applyBatch, existing func(*Row) *cachedSecret) {
	streamRows(a.cfg.ApplyWorkers, batches, func(r *Row) { a.row(ctx, r, existing(r)) })
}

// streamRows is stream with workers goroutines calling apply.
func streamRows(workers int, batches <-chan applyBatch, apply func(*Row)) {
	type pending struct {
		left int
		done func()
	}
	var mu sync.Mutex
	var queue []*pending // batches not yet done, in arrival order
	// settle runs, in order, the done of each batch at the queue's head
	// that has no row left. With mu held.
	settle := func() {
		for len(queue) > 0 && queue[0].left == 0 {
			if queue[0].done != nil {
				queue[0].done()
			}
			queue = queue[1:]
		}
	}
	type job struct {
		r *Row
		p *pending
	}
	// inFlight holds, for each Secret being applied, the rows of it that
	// wait their turn; the worker that applies one applies the next.
	inFlight := map[ObjectKey][]job{}
	jobs := make(chan job)
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			for j := range jobs {
				for ok := true; ok; {
					apply(j.r)
					j.r.Ciphertext = nil
					mu.Lock()
					j.p.left--
					settle()
					next := inFlight[j.r.ObjectKey]
					if ok = len(next) > 0; ok {
						inFlight[j.r.ObjectKey] = next[1:]
						j = next[0]
					} else {
						delete(inFlight, j.r.ObjectKey)
					}
					mu.Unlock()
				}
			}
		})
	}
	for b := range batches {
		p := &pending{left: len(b.rows), done: b.done}
		mu.Lock()
		queue = append(queue, p)
		settle()
		mu.Unlock()
		for _, r := range b.rows {
			mu.Lock()
			waiting, busy := inFlight[r.ObjectKey]
			if busy {
				inFlight[r.ObjectKey] = append(waiting, job{r, p})
			} else {
				inFlight[r.ObjectKey] = nil
			}
			mu.Unlock()
			if !busy {
				jobs <- job{r, p}
			}
		}
	}
	close(jobs)
	wg.Wait()
}

// all applies rows (distinct Secrets) as one batch of stream, and returns
// when all are applied.
func (a *rowApplier) all(ctx context.Context, rows []*Row, existing func(*Row) *cachedSecret) {
	batches := make(chan applyBatch, 1)
	batches <- applyBatch{rows: rows}
	close(batches)
	a.stream(ctx, batches, existing)
}

// skips reports whether r is not this cluster's to apply: a namespace not
// synced here, or a standby's own row.
func (a *rowApplier) skips(r *Row) bool {
	return !a.cfg.namespaceAllowed(r.Namespace) || (a.skipSource != "" && r.SourceCluster == a.skipSource)
}

// row decrypts one row and applies it. Errors are reported here (log,
// metric, Event) and not returned: one bad row must not stop the others,
// and the next full pass retries it.
func (a *rowApplier) row(ctx context.Context, r *Row, cached *cachedSecret) {
	log := a.log.WithFields(logrus.Fields{"namespace": r.Namespace, "name": r.Name, "version": r.Version, "source": r.SourceCluster})
	if a.skips(r) {
		return
	}
	p, err := openRow(a.keys, r)
	if err != nil {
		reason := rejectReason(err)
		a.metrics.rowErrors.WithLabelValues(reason).Inc()
		log = log.WithField("reason", reason).WithError(err)
		// Reported once per row version, and not tried again until the
		// row changes (or the daemon restarts, with another key ring).
		a.settle(r, false)
		if a.firstReport(r) {
			log.Error("row not applied: cannot open it")
			a.recordRejected(r, reason, err)
		} else {
			log.Debug("row still not applied: cannot open it")
		}
		return
	}
	var action string
	// The cache keeps no data: a copy it knows of is compared and written
	// against the live Secret. One it does not know of is created, which
	// reads the Secret only if its name turns out to be taken.
	var existing *corev1.Secret
	if cached != nil {
		existing, err = a.client.CoreV1().Secrets(r.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			existing, err = nil, nil
		}
	}
	if err == nil {
		action, err = a.write(ctx, r, p, existing)
	}
	if existing != nil && apierrors.IsConflict(err) {
		// Changed since it was read: apply once more against the live one.
		var live *corev1.Secret
		live, err = a.client.CoreV1().Secrets(r.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			action, err = a.write(ctx, r, p, nil)
		case err == nil:
			action, err = a.write(ctx, r, p, live)
		}
	}
	var unmanaged *errUnmanaged
	var rollback *errRollback
	switch {
	case err != nil && errors.Is(ctx.Err(), context.Canceled):
		// Shutting down (the pass's context ends only with the daemon's;
		// a pass that ran out of time has DeadlineExceeded): the write was
		// abandoned, not refused, and the next start applies the row.
		log.WithError(err).Debug("row not applied: shutting down")
	case errors.As(err, &unmanaged):
		a.metrics.rowErrors.WithLabelValues("unmanaged").Inc()
		a.settle(r, true)
		// Counted, logged and evented once per row version, not on
		// every recheck while the conflict lasts.
		if a.firstReport(r) {
			a.metrics.conflicts.Inc()
			log.Warn(unmanaged.Error())
			a.recordConflict(ctx, r.ObjectKey)
		}
	case errors.As(err, &rollback):
		a.metrics.rowErrors.WithLabelValues("rollback").Inc()
		a.settle(r, false)
		if a.firstReport(r) {
			log.WithError(err).Error("row not applied")
			a.recordRejected(r, "rollback", err)
		}
	case err != nil:
		a.metrics.rowErrors.WithLabelValues("api").Inc()
		log.WithError(err).Error("row not applied; will retry")
	default:
		a.conflicts.stop(r.ObjectKey) // if there was one, it is over
		if action == "retained" {
			a.settle(r, false)
		}
		a.metrics.rowsApplied.WithLabelValues(action).Inc()
		if action != "unchanged" {
			log.WithField("action", action).Info("applied")
			a.recordApplied(r, action)
		} else {
			log.Debug("already in sync")
		}
	}
}

// write applies an opened row: the copy for a Secret, the deletion for a
// tombstone. It returns the action taken, for the metrics and the log.
func (a *rowApplier) write(ctx context.Context, r *Row, p *Payload, existing *corev1.Secret) (string, error) {
	if p.Deleted {
		if a.cfg.DeletePolicy == deletePolicyRetain {
			return "retained", nil
		}
		deleted, err := a.writer.remove(ctx, r.ObjectKey, r.Version, existing, copyFor(r, p))
		if deleted {
			return "deleted", err
		}
		return "unchanged", err
	}
	pl, err := a.writer.apply(ctx, copyFor(r, p), existing)
	return pl.String(), err
}

func copyFor(r *Row, p *Payload) *corev1.Secret {
	return desiredCopy(r.ObjectKey, p, r.Version, r.SourceCluster)
}

// openRow opens r with the key its key id names and checks that its
// tombstone column says what the sealed payload says: the column is not
// authenticated, the payload is. A row whose Size says it is too large was
// not transferred, and is refused as such.
func openRow(keys *Keyring, r *Row) (*Payload, error) {
	if r.Size > MaxCiphertextSize {
		// Left in the database by the queries (see Store.Pull).
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, r.Size, MaxCiphertextSize)
	}
	p, err := keys.Open(r.Binding(), r.KeyID, r.Ciphertext)
	if err != nil {
		return nil, err
	}
	if p.Deleted != r.Tombstone {
		return nil, fmt.Errorf("%w: tombstone column disagrees with the sealed payload", ErrAuth)
	}
	return p, nil
}

// inSync reports whether nothing needs doing for r: a tombstone with no
// managed copy, or a copy written from this row version, or a newer one,
// whose content still has the row's keyed hash (no hand edits since). An
// older row of equal content, as a database restored from a backup holds,
// would change nothing, so it is no rollback to refuse.
func inSync(r *Row, existing *cachedSecret) bool {
	if existing == nil {
		return r.Tombstone
	}
	if r.Tombstone || existing.version < r.Version {
		return false
	}
	// The row's own key: a row not yet rewritten after a key rotation is
	// still in sync with its copy. A key not in the ring is not; opening
	// the row then reports it.
	h, ok := existing.hash(r.KeyID)
	return ok && hmac.Equal(h, r.Hash)
}

// rejectReason classifies why a row could not be opened, for the
// row_errors metric and the Event: wrong_key (a key id not in the ring),
// invalid (a format this build does not know, truncated, too large) or
// tampered (authentication failed, or the tombstone column disagrees with
// the sealed payload).
func rejectReason(err error) string {
	switch {
	case errors.Is(err, ErrWrongKey):
		return "wrong_key"
	case errors.Is(err, ErrUnsupportedFormat), errors.Is(err, ErrTooLarge), errors.Is(err, ErrTruncated):
		return "invalid"
	default:
		return "tampered"
	}
}

// firstReport reports whether r's version has not been reported yet, and
// remembers it: a bad row is logged at error level and evented once, not
// on every full pass while it lasts.
func (a *rowApplier) firstReport(r *Row) bool {
	a.reportedMu.Lock()
	defer a.reportedMu.Unlock()
	if a.reported[r.ObjectKey] == r.Version {
		return false
	}
	a.reported[r.ObjectKey] = r.Version
	return true
}

// recordRejected puts a Warning Event about a row that could not be opened
// on the Secret of that name in this cluster (whether or not it exists, so
// that `kubectl get events -n <namespace>` shows it). The message carries
// the reason and the error, which hold sizes and key ids, never data.
func (a *rowApplier) recordRejected(r *Row, reason string, err error) {
	a.recorder.warn(a.copies.ref(r.ObjectKey), "RowRejected", "Apply",
		"kube-secret-sync did not apply database row version %d (%s): %v", r.Version, reason, err)
}

// appliedEvents are the reason and note of the Normal Event for each action
// that changed a copy.
var appliedEvents = map[string][2]string{
	"created":   {"Created", "kube-secret-sync created this copy from row version %d, written by cluster %s"},
	"updated":   {"Updated", "kube-secret-sync updated this copy to row version %d, written by cluster %s"},
	"recreated": {"Recreated", "kube-secret-sync recreated this copy (its type changed) from row version %d, written by cluster %s"},
	"deleted":   {"Deleted", "kube-secret-sync deleted this copy: row version %d, written by cluster %s, says its source is gone"},
	"retained":  {"Retained", "kube-secret-sync kept this copy although row version %d, written by cluster %s, says its source is gone (DELETE_POLICY=retain); it is no longer synced"},
}

// recordApplied puts a Normal Event about what action did to the copy of
// r, within the Normal events' rate limit.
func (a *rowApplier) recordApplied(r *Row, action string) {
	if e, ok := appliedEvents[action]; ok {
		a.recorder.normalf(a.copies.ref(r.ObjectKey), e[0], "Apply", e[1], r.Version, r.SourceCluster)
	}
}

// recordConflict puts a Warning Event on the unmanaged Secret, where
// `kubectl describe secret` shows it. The Event names the Secret by
// reference: its data never goes near the recorder.
func (a *rowApplier) recordConflict(ctx context.Context, key ObjectKey) {
	s, err := a.client.CoreV1().Secrets(key.Namespace).Get(ctx, key.Name, metav1.GetOptions{})
	if err != nil {
		return
	}
	a.recorder.warn(secretRef(key, s), "NotManaged", "Apply",
		"kube-secret-sync did not overwrite this Secret: it exists without the %s=true label", managedLabel)
}
