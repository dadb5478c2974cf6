package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// tracker watches the follower cluster's managed copies and tells when
// they hold what is expected. It watches their metadata only and reads the
// digest of the content from the digest annotation, which every source
// carries (digestAnnotated) and the daemons copy with it: the copy is
// written whole, data and annotations in one object, so the annotation
// arrives with the data it describes. Watching the whole Secrets instead
// would cost the machine the sync runs on (both API servers, etcd and the
// daemons share its cores) a second stream of every copy's data, and the
// bench its decoding, all charged to the sync. verifyCopies then checks the
// data itself, outside the timed window.
type tracker struct {
	mu       sync.Mutex
	want     map[key]digest
	have     map[key]digest
	matched  int                     // keys whose have equals want
	waiters  map[key][]chan struct{} // closed when the key matches
	all      chan struct{}           // closed when every wanted key matches
	lastSeen time.Time
}

// digestAnnotation holds, on every Secret the bench writes, the hex
// digestOf its type and data.
const digestAnnotation = "kss-bench/digest"

// digestAnnotated sets s's digest annotation from its type and data.
func digestAnnotated(s *corev1.Secret) {
	d := digestOf(s.Type, s.Data)
	s.Annotations = maps.Clone(s.Annotations)
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[digestAnnotation] = hex.EncodeToString(d[:])
}

var secretsResource = corev1.SchemeGroupVersion.WithResource("secrets")

// startTracker starts watching the metadata of the Secrets that selector
// selects in the cluster behind rc and returns once the initial list is in.
func startTracker(ctx context.Context, rc *rest.Config, selector string) (*tracker, error) {
	t := &tracker{want: map[key]digest{}, have: map[key]digest{}, waiters: map[key][]chan struct{}{}}
	mc, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	factory := metadatainformer.NewFilteredSharedInformerFactory(mc, 0, metav1.NamespaceAll,
		func(o *metav1.ListOptions) { o.LabelSelector = selector })
	inf := factory.ForResource(secretsResource).Informer()
	if err := inf.SetTransform(func(obj any) (any, error) {
		if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
			return slim(m), nil
		}
		return obj, nil
	}); err != nil {
		return nil, err
	}
	_, err = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
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

// slim is what the tracker keeps of a copy's metadata: its name and the
// digest annotation.
func slim(m *metav1.PartialObjectMetadata) *metav1.PartialObjectMetadata {
	out := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{
		Namespace: m.Namespace, Name: m.Name, ResourceVersion: m.ResourceVersion,
	}}
	if d, ok := m.Annotations[digestAnnotation]; ok {
		out.Annotations = map[string]string{digestAnnotation: d}
	}
	return out
}

// observe records a slimmed Secret's arrival, change or deletion.
func (t *tracker) observe(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s, ok := obj.(*metav1.PartialObjectMetadata)
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

// verifyCopies lists the managed copies in c and compares the data of each
// with what the tracker wants for it (the digest of its type and data,
// computed here, not read from the annotation). It returns how many wanted
// copies are missing or differ, and a few of their names.
func (t *tracker) verifyCopies(ctx context.Context, c kubernetes.Interface) (bad int, some []string, err error) {
	t.mu.Lock()
	want := maps.Clone(t.want)
	t.mu.Unlock()
	seen := make(map[key]bool, len(want))
	opts := metav1.ListOptions{LabelSelector: managedLabel + "=true", Limit: 500}
	for {
		list, err := c.CoreV1().Secrets(metav1.NamespaceAll).List(ctx, opts)
		if err != nil {
			return 0, nil, fmt.Errorf("verify the copies: %w", err)
		}
		for i := range list.Items {
			s := &list.Items[i]
			k := key{s.Namespace, s.Name}
			w, wanted := want[k]
			if !wanted {
				continue
			}
			seen[k] = true
			if digestOf(s.Type, s.Data) != w {
				bad++
				if len(some) < 3 {
					some = append(some, k.String()+" (data differs)")
				}
			}
		}
		if opts.Continue = list.Continue; opts.Continue == "" {
			break
		}
	}
	for k := range want {
		if !seen[k] {
			bad++
			if len(some) < 3 {
				some = append(some, k.String()+" (missing)")
			}
		}
	}
	return bad, some, nil
}
