package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// tracker watches the follower cluster's managed copies and tells when
// they hold what is expected. It keeps one digest per copy, not the copy:
// an informer transform drops the data as each object arrives, so watching
// 10,000 Secrets costs the bench little memory.
type tracker struct {
	mu       sync.Mutex
	want     map[key]digest
	have     map[key]digest
	matched  int                     // keys whose have equals want
	waiters  map[key][]chan struct{} // closed when the key matches
	all      chan struct{}           // closed when every wanted key matches
	lastSeen time.Time
}

const digestAnnotation = "kss-bench/digest"

// startTracker starts watching Secrets labelled managed in c and returns
// once the initial list is in.
func startTracker(ctx context.Context, c kubernetes.Interface) (*tracker, error) {
	t := &tracker{want: map[key]digest{}, have: map[key]digest{}, waiters: map[key][]chan struct{}{}}
	factory := informers.NewSharedInformerFactoryWithOptions(c, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = managedLabel + "=true" }),
		informers.WithTransform(func(obj any) (any, error) {
			if s, ok := obj.(*corev1.Secret); ok {
				return slim(s), nil
			}
			return obj, nil
		}),
	)
	inf := factory.Core().V1().Secrets().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { t.observe(obj, false) },
		UpdateFunc: func(_, obj any) { t.observe(obj, false) },
		DeleteFunc: func(obj any) { t.observe(obj, true) },
	})
	if err != nil {
		return nil, err
	}
	factory.Start(ctx.Done())
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(sctx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("watch the follower cluster's Secrets: not synced within a minute")
	}
	return t, nil
}

// slim is what the tracker keeps of a Secret: its name and the digest of
// its content.
func slim(s *corev1.Secret) *corev1.Secret {
	d := digestOf(s.Type, s.Data)
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
		Namespace: s.Namespace, Name: s.Name, ResourceVersion: s.ResourceVersion,
		Annotations: map[string]string{digestAnnotation: hex.EncodeToString(d[:])},
	}}
}

// observe records a slimmed Secret's arrival, change or deletion.
func (t *tracker) observe(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	k := key{s.Namespace, s.Name}
	var d digest
	if !deleted {
		b, err := hex.DecodeString(s.Annotations[digestAnnotation])
		if err != nil || len(b) != len(d) {
			return
		}
		copy(d[:], b)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lastSeen = time.Now()
	before := t.matches(k)
	if deleted {
		delete(t.have, k)
	} else {
		t.have[k] = d
	}
	t.update(k, before)
}

// matches reports whether k's copy holds what is wanted; t.mu is held.
func (t *tracker) matches(k key) bool {
	w, ok := t.want[k]
	if !ok {
		return false
	}
	h, ok := t.have[k]
	return ok && h == w
}

// update keeps matched and the waiters right after k changed; t.mu is held.
func (t *tracker) update(k key, before bool) {
	now := t.matches(k)
	switch {
	case now && !before:
		t.matched++
	case !now && before:
		t.matched--
	}
	if now {
		for _, ch := range t.waiters[k] {
			close(ch)
		}
		delete(t.waiters, k)
	}
	if t.all != nil && t.matched == len(t.want) {
		close(t.all)
		t.all = nil
	}
}

// expect sets what k's copy must hold and returns a channel closed once it
// does (at once if it already does).
func (t *tracker) expect(k key, d digest) <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	before := t.matches(k)
	t.want[k] = d
	ch := make(chan struct{})
	t.waiters[k] = append(t.waiters[k], ch)
	t.update(k, before)
	return ch
}

// expectAll sets what every Secret's copy must hold and returns a channel
// closed once all do.
func (t *tracker) expectAll(secrets []*corev1.Secret) <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range secrets {
		k := key{s.Namespace, s.Name}
		before := t.matches(k)
		t.want[k] = digestOf(s.Type, s.Data)
		if now := t.matches(k); now != before {
			if now {
				t.matched++
			} else {
				t.matched--
			}
		}
	}
	ch := make(chan struct{})
	if t.matched == len(t.want) {
		close(ch)
	} else {
		t.all = ch
	}
	return ch
}

// progress returns how many copies match and how many are wanted.
func (t *tracker) progress() (matched, wanted, present int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.matched, len(t.want), len(t.have)
}
