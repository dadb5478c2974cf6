package main

import (
	"context"
	"errors"
	"fmt"

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
	for _, r := range todo {
		if r.Ciphertext != nil { // else rewritten since: the next pull has it
			f.applyRow(ctx, r, copies[r.ObjectKey])
		}
	}
	return nil
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
		reason := "tampered"
		switch {
		case errors.Is(err, ErrWrongKey):
			reason = "wrong_key"
		case errors.Is(err, ErrUnsupportedFormat), errors.Is(err, ErrTooLarge):
			reason = "invalid"
		}
		f.metrics.rowErrors.WithLabelValues(reason).Inc()
		log.WithError(err).Error("row not applied: cannot open it")
		return
	}
	action, err := f.write(ctx, r, p, existing)
	if existing != nil && apierrors.IsConflict(err) {
		// The cached copy was stale: apply once more against the live one.
		action, err = f.write(ctx, r, p, nil)
	}
	var unmanaged *errUnmanaged
	var rollback *errRollback
	switch {
	case errors.As(err, &unmanaged):
		f.metrics.rowErrors.WithLabelValues("unmanaged").Inc()
		// Counted, logged and evented once per row version, not on
		// every full pass while the conflict lasts.
		if f.reported[r.ObjectKey] != r.Version {
			f.reported[r.ObjectKey] = r.Version
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
