package main

// Watches on the unmanaged Secrets that hold synced names. Such a conflict
// is settled (apply.go): full passes skip its row without an API request.
// What ends it is a change of the unmanaged Secret, above all its deletion
// (a hand-over through the managed label shows up in the cache of copies),
// and a watch on that one name reports it without asking.

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// conflictWatches runs one watch per conflicting name, for as long as the
// conflict lasts. Its context is the follower's: watches end with it.
type conflictWatches struct {
	ctx    context.Context
	client kubernetes.Interface

	mu      sync.Mutex
	running map[ObjectKey]context.CancelFunc
}

func newConflictWatches(client kubernetes.Interface) *conflictWatches {
	return &conflictWatches{ctx: context.Background(), client: client, running: map[ObjectKey]context.CancelFunc{}}
}

// start makes ctx, the follower's, the context of the watches.
func (w *conflictWatches) start(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ctx = ctx
}

// watch starts watching the Secret key, unless it is watched already, and
// calls changed (from the watch's goroutine) whenever it changes or goes.
func (w *conflictWatches) watch(key ObjectKey, changed func(ObjectKey)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.running[key]; ok || w.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(w.ctx)
	w.running[key] = cancel
	secrets := w.client.CoreV1().Secrets(key.Namespace)
	byName := fields.OneTermEqualSelector("metadata.name", key.Name).String()
	_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				o.FieldSelector = byName
				l, err := secrets.List(ctx, o)
				if err == nil && len(l.Items) == 0 {
					changed(key) // gone before the watch began
				}
				return l, err
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.FieldSelector = byName
				return secrets.Watch(ctx, o)
			},
		},
		ObjectType: &corev1.Secret{},
		Handler: cache.ResourceEventHandlerFuncs{
			UpdateFunc: func(_, _ any) { changed(key) },
			DeleteFunc: func(any) { changed(key) },
		},
		// Only that it changes matters, never what it holds.
		Transform: func(obj any) (any, error) {
			if s, ok := obj.(*corev1.Secret); ok {
				s.Data, s.StringData, s.ManagedFields = nil, nil, nil
			}
			return obj, nil
		},
	})
	go ctrl.RunWithContext(ctx)
}

// stop ends the watch of key, if any: its conflict is over.
func (w *conflictWatches) stop(key ObjectKey) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if cancel, ok := w.running[key]; ok {
		cancel()
		delete(w.running, key)
	}
}

// watched reports how many names are watched.
func (w *conflictWatches) watched() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.running)
}
