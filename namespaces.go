package main

// NAMESPACE_SELECTOR: the namespaces whose labels match are synced too,
// and a namespace that gains or loses the labels is picked up by a full
// pass at once, without a restart, as External Secrets' namespaceSelectors
// are.

import (
	"context"
	"fmt"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// namespaceWatch is a watch of the Namespaces that a label selector
// selects. The API server filters by the selector, so a namespace that
// stops matching arrives as deleted, and one that starts as added.
type namespaceWatch struct {
	store cache.Store
	// changed is signalled when a namespace starts or stops matching,
	// and count counts those.
	changed chan struct{}
	count   atomic.Uint64
}

// startNamespaceWatch starts watching the Namespaces that selector selects
// and waits until the first list is in.
func startNamespaceWatch(ctx context.Context, client kubernetes.Interface, selector labels.Selector) (*namespaceWatch, error) {
	inf := coreinformers.NewFilteredNamespaceInformer(client, 0, cache.Indexers{},
		func(o *metav1.ListOptions) { o.LabelSelector = selector.String() })
	// Only the name is kept: what selects a namespace is the server's.
	if err := inf.SetTransform(func(obj any) (any, error) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.Name, UID: ns.UID, ResourceVersion: ns.ResourceVersion}}, nil
		}
		return obj, nil
	}); err != nil {
		return nil, err
	}
	w := &namespaceWatch{store: inf.GetStore(), changed: make(chan struct{}, 1)}
	signal := func(any) {
		w.count.Add(1)
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: signal, DeleteFunc: signal}); err != nil {
		return nil, err
	}
	go inf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("watch namespaces (NAMESPACE_SELECTOR %s): not synced: %w", selector, context.Cause(ctx))
	}
	// The first list is what the first full pass syncs anyway.
	select {
	case <-w.changed:
	default:
	}
	return w, nil
}

// withNamespaceWatch returns cfg itself without NAMESPACE_SELECTOR, else a
// copy of it with a namespace watch started until ctx ends.
func (c *Config) withNamespaceWatch(ctx context.Context, client kubernetes.Interface) (*Config, error) {
	if c.nsSelector == nil {
		return c, nil
	}
	w, err := startNamespaceWatch(ctx, client, c.nsSelector)
	if err != nil {
		return nil, err
	}
	cp := *c
	cp.namespaces = w
	return &cp, nil
}

// selects reports whether namespace matches (false for a nil watch).
func (w *namespaceWatch) selects(namespace string) bool {
	if w == nil {
		return false
	}
	_, ok, _ := w.store.GetByKey(namespace)
	return ok
}

// changeCount is how many times a namespace started or stopped matching
// (0 for a nil watch).
func (w *namespaceWatch) changeCount() uint64 {
	if w == nil {
		return 0
	}
	return w.count.Load()
}

// changes is signalled when a namespace starts or stops matching; nil (a
// channel that never fires) for a nil watch.
func (w *namespaceWatch) changes() <-chan struct{} {
	if w == nil {
		return nil
	}
	return w.changed
}
