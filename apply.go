package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// This file holds the follower's handling of single rows: open, check,
// apply, and report what could not be applied.

// applyOutOfSync applies the rows (read without ciphertext) whose copy is
// not in sync, fetching just their ciphertexts.
func (f *followerLoop) applyOutOfSync(ctx context.Context, rows []Row, copies map[ObjectKey]*corev1.Secret) error {
	var todo []*Row
	for i := range rows {
		if !f.inSync(&rows[i], copies[rows[i].ObjectKey]) {
			todo = append(todo, &rows[i])
		}
	}
	if err := f.store.FillCiphertexts(ctx, todo); err != nil {
		return err
	}
	// A row rewritten since has no ciphertext: the next pull brings it.
	todo = slices.DeleteFunc(todo, func(r *Row) bool { return r.Ciphertext == nil })
	f.applyAll(ctx, todo, func(r *Row) *corev1.Secret { return copies[r.ObjectKey] })
	return nil
}

// applyAll applies rows with up to APPLY_WORKERS API calls in flight: a
// create or update is a round trip to the API server, and one at a time
// would leave the client's QPS budget unused. The rows name distinct
// Secrets (one page of one query, one row per Secret), so their order
// among themselves does not matter; applyAll returns when all are done,
// and only then may the cursor move past them.
func (f *followerLoop) applyAll(ctx context.Context, rows []*Row, existing func(*Row) *corev1.Secret) {
	workers := min(max(f.cfg.ApplyWorkers, 1), len(rows))
	if workers <= 1 {
		for _, r := range rows {
			f.applyRow(ctx, r, existing(r))
		}
		return
	}
	next := make(chan *Row)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for r := range next {
				f.applyRow(ctx, r, existing(r))
			}
		})
	}
	for _, r := range rows {
		next <- r
	}
	close(next)
	wg.Wait()
}

// applyRow decrypts one row and applies it. Errors are reported here (log,
// metric, Event for conflicts) and not returned: one bad row must not stop
// the others.
func (f *followerLoop) applyRow(ctx context.Context, r *Row, existing *corev1.Secret) {
	log := f.log.WithFields(logrus.Fields{"namespace": r.Namespace, "name": r.Name, "version": r.Version, "source": r.SourceCluster})
	if !f.cfg.namespaceAllowed(r.Namespace) {
		return
	}
	p, err := f.cfg.keys.Open(r.Binding(), r.KeyID, r.Ciphertext)
	if err == nil && p.Deleted != r.Tombstone {
		err = fmt.Errorf("%w: tombstone column disagrees with the sealed payload", ErrAuth)
	}
	if err != nil {
		reason := rejectReason(err)
		f.metrics.rowErrors.WithLabelValues(reason).Inc()
		log = log.WithField("reason", reason).WithError(err)
		// Retried by every full pass, but reported once per row version.
		if f.firstReport(r) {
			log.Error("row not applied: cannot open it")
			f.recordRejected(r, reason, err)
		} else {
			log.Debug("row still not applied: cannot open it")
		}
		return
	}
	action, err := f.write(ctx, r, p, existing)
	if existing != nil && apierrors.IsConflict(err) {
		// The cached copy was stale: apply once more against the live one.
		var live *corev1.Secret
		live, err = f.client.CoreV1().Secrets(r.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			action, err = f.write(ctx, r, p, nil)
		case err == nil:
			action, err = f.write(ctx, r, p, live)
		}
	}
	var unmanaged *errUnmanaged
	var rollback *errRollback
	switch {
	case errors.As(err, &unmanaged):
		f.metrics.rowErrors.WithLabelValues("unmanaged").Inc()
		// Counted, logged and evented once per row version, not on
		// every full pass while the conflict lasts.
		if f.firstReport(r) {
			f.metrics.conflicts.Inc()
			log.Warn(unmanaged.Error())
			f.recordConflict(ctx, r.ObjectKey)
		}
	case errors.As(err, &rollback):
		f.metrics.rowErrors.WithLabelValues("rollback").Inc()
		log.WithError(err).Error("row not applied")
	case err != nil:
		f.metrics.rowErrors.WithLabelValues("api").Inc()
		log.WithError(err).Error("row not applied; will retry")
	default:
		f.metrics.rowsApplied.WithLabelValues(action).Inc()
		if action != "unchanged" {
			log.WithField("action", action).Info("applied")
		} else {
			log.Debug("already in sync")
		}
	}
}

// write applies an opened row: the copy for a Secret, the deletion for a
// tombstone. It returns the action taken, for the metrics and the log.
func (f *followerLoop) write(ctx context.Context, r *Row, p *Payload, existing *corev1.Secret) (string, error) {
	if p.Deleted {
		if f.cfg.DeletePolicy == deletePolicyRetain {
			return "retained", nil
		}
		deleted, err := f.writer.remove(ctx, r.ObjectKey, r.Version, existing)
		if deleted {
			return "deleted", err
		}
		return "unchanged", err
	}
	pl, err := f.writer.apply(ctx, copyFor(r, p), existing)
	return pl.String(), err
}

func copyFor(r *Row, p *Payload) *corev1.Secret {
	return desiredCopy(r.ObjectKey, p, r.Version, r.SourceCluster)
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
func (f *followerLoop) firstReport(r *Row) bool {
	f.reportedMu.Lock()
	defer f.reportedMu.Unlock()
	if f.reported[r.ObjectKey] == r.Version {
		return false
	}
	f.reported[r.ObjectKey] = r.Version
	return true
}

// recordRejected puts a Warning Event about a row that could not be opened
// on the Secret of that name in this cluster (whether or not it exists, so
// that `kubectl get events -n <namespace>` shows it). The message carries
// the reason and the error, which hold sizes and key ids, never data.
func (f *followerLoop) recordRejected(r *Row, reason string, err error) {
	ref := &corev1.ObjectReference{APIVersion: "v1", Kind: "Secret", Namespace: r.Namespace, Name: r.Name}
	if s := f.copies.get(r.ObjectKey); s != nil {
		ref.UID, ref.ResourceVersion = s.UID, s.ResourceVersion
	}
	f.recorder.Eventf(ref, corev1.EventTypeWarning, "RowRejected",
		"kube-secret-sync did not apply database row version %d (%s): %v", r.Version, reason, err)
}

// recordConflict puts a Warning Event on the unmanaged Secret, where
// `kubectl describe secret` shows it.
func (f *followerLoop) recordConflict(ctx context.Context, key ObjectKey) {
	s, err := f.client.CoreV1().Secrets(key.Namespace).Get(ctx, key.Name, metav1.GetOptions{})
	if err != nil {
		return
	}
	f.recorder.Eventf(s, corev1.EventTypeWarning, "NotManaged",
		"kube-secret-sync did not overwrite this Secret: it exists without the %s=true label", managedLabel)
}
