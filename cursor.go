package main

import (
	"context"
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

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
	if err != nil {
		return Cursor{}, fmt.Errorf("read cursor %s/%s: bad version: %w", s.namespace, s.name, err)
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
