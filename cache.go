package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// secretCache is a watched, in-memory view of the Secrets that match a
// label selector in the synced namespaces: one cluster-wide watch, or one
// per namespace when NAMESPACES is set (which then works with namespaced
// RBAC). The leader watches the labelled sources through it, the follower
// its managed copies. Objects from it are shared: never mutate them.
type secretCache struct {
	cfg      *Config
	selector labels.Selector
	listers  map[string]corelisters.SecretLister // by namespace; "" = all
}

// startSecretCache starts the watches, registers handler (may be nil) and
// waits until the cache is filled: reconciling from a partial cache would
// take every Secret missing from it as deleted. A cached Secret with more
// than cacheDataLimit of data keeps, instead of its data, its keyed hash
// under each of hashKeyIDs (see stripData).
func startSecretCache(ctx context.Context, client kubernetes.Interface, cfg *Config, selector labels.Selector, handler cache.ResourceEventHandler, keys *Keyring, hashKeyIDs []string) (*secretCache, error) {
	c := &secretCache{cfg: cfg, selector: selector, listers: map[string]corelisters.SecretLister{}}
	namespaces := cfg.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	var synced []cache.InformerSynced
	for _, ns := range namespaces {
		factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
			informers.WithNamespace(ns),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector.String() }))
		inf := factory.Core().V1().Secrets()
		transform := func(obj any) (any, error) {
			obj, err := trimForCache(obj)
			if s, ok := obj.(*corev1.Secret); ok && err == nil {
				stripData(s, keys, hashKeyIDs)
			}
			return obj, err
		}
		if err := inf.Informer().SetTransform(transform); err != nil {
			return nil, err
		}
		if handler != nil {
			if _, err := inf.Informer().AddEventHandler(handler); err != nil {
				return nil, err
			}
		}
		c.listers[ns] = inf.Lister()
		synced = append(synced, inf.Informer().HasSynced)
		factory.Start(ctx.Done())
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil, fmt.Errorf("watch secrets (%s): cache not synced: %w", selector, context.Cause(ctx))
	}
	return c, nil
}

// trimForCache shrinks an object before the cache stores it: the cache
// holds every synced Secret, and managedFields are often as large as a
// small Secret's data. Only the newest entry's time is kept, which is all
// that lastChange reads. Objects from the cache must therefore never be
// sent back with their managedFields (secretWriter clears them).
func trimForCache(obj any) (any, error) {
	s, ok := obj.(*corev1.Secret)
	if !ok || len(s.ManagedFields) == 0 {
		return obj, nil
	}
	var newest *metav1.Time
	for _, f := range s.ManagedFields {
		if f.Time != nil && (newest == nil || f.Time.After(newest.Time)) {
			newest = f.Time
		}
	}
	s.ManagedFields = []metav1.ManagedFieldsEntry{{Time: newest}}
	return s, nil
}

// cacheDataLimit is the data size above which a watched Secret is cached
// without its data. Ordinary Secrets (a TLS certificate is a few KiB) stay
// whole, so that the common path makes no extra request; a fleet of
// near-1 MiB Secrets then fits the memory limit, and the loops fetch such a
// Secret only when they must seal or write it.
const cacheDataLimit = 64 << 10

// Annotations that only cached objects carry (the managed prefix keeps them
// out of every payload): the data size of a stripped Secret and its keyed
// hash per key id.
const (
	cachedSizeAnnotation       = managedPrefix + "cached-data-size"
	cachedHashAnnotationPrefix = managedPrefix + "cached-hash."
)

// stripData drops the data of s, the cache's own copy, when it is larger
// than cacheDataLimit, keeping its size and the keyed hash of its payload
// under each key id in ids.
func stripData(s *corev1.Secret, keys *Keyring, ids []string) {
	size := dataSize(s.Data)
	if size <= cacheDataLimit || keys == nil {
		return
	}
	p := payloadOf(s)
	annotations := maps.Clone(s.Annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	for _, id := range ids {
		if h, ok := keys.HashFor(id, s.Namespace, s.Name, p); ok {
			annotations[cachedHashAnnotationPrefix+id] = base64.StdEncoding.EncodeToString(h)
		}
	}
	annotations[cachedSizeAnnotation] = strconv.Itoa(size)
	s.Annotations, s.Data, s.StringData = annotations, nil, nil
}

// isStripped reports whether s came from a cache without its data.
func isStripped(s *corev1.Secret) bool {
	_, ok := s.Annotations[cachedSizeAnnotation]
	return ok
}

// cachedHash is the keyed hash of s's payload under keyID: computed, or,
// for a Secret cached without its data, as the cache kept it. ok is false
// for a key id not in the ring (or not kept).
func cachedHash(s *corev1.Secret, keys *Keyring, keyID string) (sum []byte, ok bool) {
	if !isStripped(s) {
		return keys.HashFor(keyID, s.Namespace, s.Name, payloadOf(s))
	}
	h, err := base64.StdEncoding.DecodeString(s.Annotations[cachedHashAnnotationPrefix+keyID])
	if err != nil || len(h) == 0 {
		return nil, false
	}
	return h, true
}

// cachedDataSize is the size of s's data, also for a stripped Secret.
func cachedDataSize(s *corev1.Secret) int {
	if n, err := strconv.Atoi(s.Annotations[cachedSizeAnnotation]); err == nil {
		return n
	}
	return dataSize(s.Data)
}

// get returns the Secret key, or nil when it does not exist, does not
// match the selector, or is in a namespace that is not synced.
func (c *secretCache) get(key ObjectKey) *corev1.Secret {
	if !c.cfg.namespaceAllowed(key.Namespace) {
		return nil
	}
	lister := c.listers[metav1.NamespaceAll]
	if lister == nil {
		lister = c.listers[key.Namespace]
	}
	if lister == nil {
		return nil
	}
	s, err := lister.Secrets(key.Namespace).Get(key.Name)
	if err != nil {
		return nil
	}
	return s
}

// list returns every cached Secret of the synced namespaces.
func (c *secretCache) list() []*corev1.Secret {
	var out []*corev1.Secret
	for _, lister := range c.listers {
		all, _ := lister.List(c.selector)
		for _, s := range all {
			if c.cfg.namespaceAllowed(s.Namespace) {
				out = append(out, s)
			}
		}
	}
	return out
}
