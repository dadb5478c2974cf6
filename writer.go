package main

// secretWriter: the API calls that make a follower's copy equal its row,
// and the refusals (an unmanaged Secret, a rollback) that stop them.

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// errUnmanaged says a Secret of the same name exists and is not ours.
type errUnmanaged struct{ key ObjectKey }

func (e *errUnmanaged) Error() string {
	return fmt.Sprintf("%s exists and is not managed by kube-secret-sync (no %s=true label): left alone", e.key, managedLabel)
}

// errRollback says a row is older than what the copy was written from: a
// database writer replaying an old row, which is refused.
type errRollback struct {
	key          ObjectKey
	row, applied int64
}

func (e *errRollback) Error() string {
	return fmt.Sprintf("%s: row version %d is older than applied version %d: refusing rollback", e.key, e.row, e.applied)
}

// secretWriter applies desired copies to a follower cluster.
type secretWriter struct {
	client           kubernetes.Interface
	createNamespaces bool
	log              *logrus.Entry
	// adopt, if set, reports whether an unmanaged Secret may be taken
	// over as the copy desired (a standby leader's rule, see standbyAdopts).
	adopt func(existing, desired *corev1.Secret) bool

	// namespaces known to exist (or just created), so that concurrent
	// creates into a new namespace create it once, up front, instead of
	// each failing with NotFound and racing to create it.
	namespaces     sync.Map // string → struct{}
	namespaceGroup singleflight.Group
}

// apply makes the cluster's copy equal desired. existing is the current
// copy if the caller has it. Without it the copy is created: in the common
// case (a new Secret) that is the one API call needed, and only when the
// name is taken (an unmanaged Secret, or a copy the cache has not seen yet)
// is the live object read.
func (w *secretWriter) apply(ctx context.Context, desired *corev1.Secret, existing *corev1.Secret) (plan, error) {
	key := ObjectKey{desired.Namespace, desired.Name}
	secrets := w.client.CoreV1().Secrets(desired.Namespace)
	if existing == nil {
		err := w.create(ctx, desired)
		if !apierrors.IsAlreadyExists(err) {
			return planCreate, err
		}
		got, err := secrets.Get(ctx, desired.Name, metav1.GetOptions{})
		if err != nil {
			// NotFound: deleted again since; the next pass creates it.
			return planNone, fmt.Errorf("get %s: %w", key, err)
		}
		existing = got
	}
	if !isManaged(existing) && !w.adopts(existing, desired) {
		return planNone, &errUnmanaged{key}
	}
	if row, applied := appliedVersion(desired), appliedVersion(existing); row < applied {
		return planNone, &errRollback{key, row, applied}
	}
	switch p := planFor(existing, desired); p {
	case planNone:
		return p, nil
	case planUpdate:
		// Start from the live object so that what others own on it
		// (ownerReferences or finalizers added in this cluster) survives.
		upd := existing.DeepCopy()
		// nil keeps the server's managedFields; the cached ones are trimmed.
		upd.ManagedFields = nil
		upd.Labels, upd.Annotations = desired.Labels, desired.Annotations
		upd.Type, upd.Data, upd.Immutable, upd.StringData = desired.Type, desired.Data, desired.Immutable, nil
		if _, err := secrets.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
			return p, fmt.Errorf("update %s: %w", key, err)
		}
		return p, nil
	default:
		err := secrets.Delete(ctx, desired.Name, metav1.DeleteOptions{Preconditions: exactly(existing)})
		if err != nil && !apierrors.IsNotFound(err) {
			return p, fmt.Errorf("delete %s for recreation: %w", key, err)
		}
		// The copy is gone: create it even if a shutdown comes now, so
		// that no replica ever leaves it missing (bounded, since the API
		// server may be what is failing).
		createCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recreateTimeout)
		defer cancel()
		err = w.create(createCtx, desired)
		if apierrors.IsAlreadyExists(err) {
			// Created by someone else in between: never take it over.
			return p, &errUnmanaged{key}
		}
		return p, err
	}
}

// adopts reports whether the unmanaged Secret existing is taken over as
// the copy desired, and says so.
func (w *secretWriter) adopts(existing, desired *corev1.Secret) bool {
	if w.adopt == nil || !w.adopt(existing, desired) {
		return false
	}
	w.log.WithFields(logrus.Fields{"namespace": existing.Namespace, "name": existing.Name}).
		Info("standby: this cluster's labelled Secret becomes a managed copy of the writer's row")
	return true
}

// recreateTimeout bounds the create that completes a recreation.
const recreateTimeout = 10 * time.Second

// exactly is the precondition of deleting s: the very object that was
// compared (UID) in the state it was compared in (resourceVersion), so
// that a copy created, handed over or changed meanwhile is never deleted.
// A stale one fails with a conflict, and is compared again.
func exactly(s *corev1.Secret) *metav1.Preconditions {
	uid, rv := s.UID, s.ResourceVersion
	p := &metav1.Preconditions{UID: &uid}
	if rv != "" {
		p.ResourceVersion = &rv
	}
	return p
}

func (w *secretWriter) create(ctx context.Context, desired *corev1.Secret) error {
	key := ObjectKey{desired.Namespace, desired.Name}
	if w.createNamespaces {
		// Once per namespace and process: one call, where the first
		// creates into a new namespace would otherwise all fail.
		// An error here is not final: the namespace may exist even if
		// it cannot be created (RBAC), and the create below tells.
		if _, known := w.namespaces.Load(desired.Namespace); !known {
			_ = w.ensureNamespace(ctx, desired.Namespace)
		}
	}
	err := createSecret(ctx, w.client, desired)
	if apierrors.IsNotFound(err) && w.createNamespaces {
		// The namespace is missing (the only NotFound a create returns):
		// deleted since we last saw it.
		w.namespaces.Delete(desired.Namespace)
		if err := w.ensureNamespace(ctx, desired.Namespace); err != nil {
			return err
		}
		err = createSecret(ctx, w.client, desired)
	}
	if err != nil {
		// AlreadyExists stays recognisable (apierrors unwraps): the
		// caller decides what a taken name means.
		return fmt.Errorf("create %s: %w", key, err)
	}
	w.namespaces.Store(desired.Namespace, struct{}{})
	return nil
}

// createSecret creates s. Through a real client it posts s and does not
// decode the created Secret that the server answers with, which nobody
// reads (the watch brings it to the cache): decoding it was a fifteenth of
// a follower's CPU in an initial sync. The response is still read, and an
// error still decoded. client-go's fake clientset has no REST client, and
// gets the typed call.
func createSecret(ctx context.Context, client kubernetes.Interface, s *corev1.Secret) error {
	if rc, ok := client.CoreV1().RESTClient().(*rest.RESTClient); ok && rc != nil {
		return rc.Post().Namespace(s.Namespace).Resource("secrets").Body(s).Do(ctx).Error()
	}
	_, err := client.CoreV1().Secrets(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
	return err
}

// ensureNamespace creates namespace name unless it exists. Concurrent
// callers for one namespace share one API call.
func (w *secretWriter) ensureNamespace(ctx context.Context, name string) error {
	_, err, _ := w.namespaceGroup.Do(name, func() (any, error) {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{managedPrefix + "created-namespace": "true"},
		}}
		_, err := w.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		switch {
		case err == nil:
			w.log.WithField("namespace", name).Info("created namespace")
		case !apierrors.IsAlreadyExists(err):
			return nil, fmt.Errorf("create namespace %s: %w", name, err)
		}
		w.namespaces.Store(name, struct{}{})
		return nil, nil
	})
	return err
}

// remove deletes the managed copy for a tombstone. existing is the
// current copy from the watched cache of managed copies: without one there
// is nothing of ours to delete (a copy created a moment ago and not yet
// cached is deleted by the next full pass, which sees it).
//
// A standby (adopt set), whose cache holds the labelled Secrets, also
// deletes one that is no copy when the tombstone is newer (standbyAdopts):
// tomb is the tombstone as a desired copy, for that comparison.
func (w *secretWriter) remove(ctx context.Context, key ObjectKey, version int64, existing, tomb *corev1.Secret) (bool, error) {
	secrets := w.client.CoreV1().Secrets(key.Namespace)
	if existing == nil {
		return false, nil
	}
	if !isManaged(existing) && !w.adopts(existing, tomb) {
		return false, &errUnmanaged{key}
	}
	if applied := appliedVersion(existing); version < applied {
		return false, &errRollback{key, version, applied}
	}
	err := secrets.Delete(ctx, key.Name, metav1.DeleteOptions{Preconditions: exactly(existing)})
	if err != nil && !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("delete %s: %w", key, err)
	}
	return err == nil, nil
}
