package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"sync"
	"unique"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// secretCache is a watched, in-memory view of the Secrets that match a
// label selector in the synced namespaces: one cluster-wide watch, or one
// per namespace when NAMESPACES is set (which then works with namespaced
// RBAC). The leader watches the labelled sources through it, the follower
// its managed copies. It keeps what the loops compare (cachedSecret), not
// the Secrets themselves: anything that writes reads the live Secret.
type secretCache struct {
	cfg      *Config
	indexers map[string]cache.Indexer // by namespace; "" = all
	// counts is how many Secrets each namespace holds: kept by an event
	// handler instead of a namespace index, whose sets of keys would cost
	// about 90 bytes per Secret.
	mu     sync.Mutex
	counts map[string]int
}

// cachedSecret is what a secretCache keeps of a Secret: about 400 bytes
// with the informer's own bookkeeping, whatever the Secret's size, so that
// 100,000 Secrets fit a daemon's memory limit (issue 13). Instead of its
// data it holds the keyed hash of its payload, under each key id the loop
// compares with. Never mutate one: the informer shares it.
type cachedSecret struct {
	namespace, name string
	uid             types.UID
	resourceVersion string
	typ             corev1.SecretType
	// managed: the managed label is set (isManaged).
	managed bool
	// version is the row version a managed copy was written from
	// (appliedVersion), -1 for none.
	version int64
	// sealedSize estimates the sealed payload's size (ApproxSealedSize).
	sealedSize int
	// hashed is the hash under the first key id, more under the others
	// (during a key rotation): inline, one allocation fewer per Secret.
	hashed keyedHash
	more   []keyedHash
}

type keyedHash struct {
	keyID string
	sum   [sha256.Size]byte
}

// slim is what the cache keeps of s: the keyed hash of its payload under
// each key id in ids, and the few fields the loops read.
func slim(s *corev1.Secret, keys *Keyring, ids []string) *cachedSecret {
	p := payloadOf(s)
	c := &cachedSecret{
		namespace:       unique.Make(s.Namespace).Value(),
		name:            s.Name,
		uid:             s.UID,
		resourceVersion: s.ResourceVersion,
		typ:             corev1.SecretType(unique.Make(string(s.Type)).Value()),
		managed:         isManaged(s),
		version:         appliedVersion(s),
		sealedSize:      ApproxSealedSize(p),
	}
	for i, id := range ids {
		h, ok := keys.HashFor(id, s.Namespace, s.Name, p)
		if !ok {
			continue
		}
		kh := keyedHash{keyID: id}
		copy(kh.sum[:], h)
		if i == 0 {
			c.hashed = kh
		} else {
			c.more = append(c.more, kh)
		}
	}
	return c
}

// hash is the keyed hash of the Secret's payload under keyID; ok is false
// for a key id the cache does not keep.
func (c *cachedSecret) hash(keyID string) (sum []byte, ok bool) {
	if c.hashed.keyID == keyID && keyID != "" {
		return c.hashed.sum[:], true
	}
	for i := range c.more {
		if c.more[i].keyID == keyID {
			return c.more[i].sum[:], true
		}
	}
	return nil, false
}

func (c *cachedSecret) key() ObjectKey { return ObjectKey{c.namespace, c.name} }

// syncable is syncable for a cached Secret.
func (c *cachedSecret) syncable() bool { return !slices.Contains(neverSynced, c.typ) }

// GetObjectMeta makes a cachedSecret an object that the informer can key
// and index (by namespace).
func (c *cachedSecret) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: c.namespace, Name: c.name, UID: c.uid, ResourceVersion: c.resourceVersion}
}

func (c *cachedSecret) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (c *cachedSecret) DeepCopyObject() runtime.Object {
	cp := *c
	cp.more = slices.Clone(c.more)
	return &cp
}

// startSecretCache starts the watches, registers handler (may be nil) and
// waits until the cache is filled: reconciling from a partial cache would
// take every Secret missing from it as deleted. The cache keeps each Secret
// as slim makes it, with its keyed hash under each of hashKeyIDs.
func startSecretCache(ctx context.Context, client kubernetes.Interface, cfg *Config, selector labels.Selector, handler cache.ResourceEventHandler, keys *Keyring, hashKeyIDs []string) (*secretCache, error) {
	c := &secretCache{cfg: cfg, indexers: map[string]cache.Indexer{}, counts: map[string]int{}}
	namespaces := cfg.Namespaces
	if cfg.watchesAll() {
		namespaces = []string{metav1.NamespaceAll}
	}
	var synced []cache.InformerSynced
	tally := cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { c.tally(obj, 1) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			c.tally(obj, -1)
		},
	}
	for _, ns := range namespaces {
		// No indexers (the factory's informer indexes by namespace).
		inf := coreinformers.NewFilteredSecretInformer(client, ns, 0, cache.Indexers{},
			func(o *metav1.ListOptions) { o.LabelSelector = selector.String() })
		transform := func(obj any) (any, error) {
			if s, ok := obj.(*corev1.Secret); ok {
				return slim(s, keys, hashKeyIDs), nil
			}
			return obj, nil
		}
		if err := inf.SetTransform(transform); err != nil {
			return nil, err
		}
		for _, h := range []cache.ResourceEventHandler{tally, handler} {
			if h == nil {
				continue
			}
			if _, err := inf.AddEventHandler(h); err != nil {
				return nil, err
			}
		}
		c.indexers[ns] = inf.GetIndexer()
		synced = append(synced, inf.HasSynced)
		go inf.Run(ctx.Done())
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil, fmt.Errorf("watch secrets (%s): cache not synced: %w", selector, context.Cause(ctx))
	}
	return c, nil
}

// indexer is the index that holds namespace's Secrets, or nil.
func (c *secretCache) indexer(namespace string) cache.Indexer {
	if i := c.indexers[metav1.NamespaceAll]; i != nil {
		return i
	}
	return c.indexers[namespace]
}

// get returns the Secret key, or nil when it does not exist, does not
// match the selector, or is in a namespace that is not synced.
func (c *secretCache) get(key ObjectKey) *cachedSecret {
	i := c.indexer(key.Namespace)
	if i == nil || !c.cfg.namespaceAllowed(key.Namespace) {
		return nil
	}
	obj, ok, _ := i.GetByKey(key.Namespace + "/" + key.Name)
	s, _ := obj.(*cachedSecret)
	if !ok {
		return nil
	}
	return s
}

// list returns every cached Secret of the synced namespaces.
func (c *secretCache) list() []*cachedSecret {
	var out []*cachedSecret
	for _, i := range c.indexers {
		for _, obj := range i.List() {
			if s, ok := obj.(*cachedSecret); ok && c.cfg.namespaceAllowed(s.namespace) {
				out = append(out, s)
			}
		}
	}
	return out
}

// ref is what an Event about the Secret key names (secretRef), with the
// UID and resourceVersion of the cached Secret, if c holds it (c may be
// nil).
func (c *secretCache) ref(key ObjectKey) *corev1.ObjectReference {
	ref := secretRef(key, nil)
	if c != nil {
		if s := c.get(key); s != nil {
			ref.UID, ref.ResourceVersion = s.uid, s.resourceVersion
		}
	}
	return ref
}

// count is how many Secrets the cache holds in namespace.
func (c *secretCache) count(namespace string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[namespace]
}

// tally counts obj, a Secret added (delta 1) or deleted (-1), in its
// namespace.
func (c *secretCache) tally(obj any, delta int) {
	s, ok := obj.(*cachedSecret)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts[s.namespace] += delta; c.counts[s.namespace] <= 0 {
		delete(c.counts, s.namespace)
	}
}

// listMin is how many Secrets of one namespace a read needs before it lists
// the namespace (in pages of listPage) instead of getting each: the initial
// sync of a namespace of thousands reads it in a few requests, and one
// changed Secret costs one GET.
const (
	listMin      = 4
	listPage     = 500
	readWorkers  = 16
	listMaxWaste = 4 // list only if at most this many Secrets come per one wanted
)

// liveSecret is what readLive keeps of a Secret: its payload, and the
// resourceVersion it was read at.
type liveSecret struct {
	payload         *Payload
	resourceVersion string
}

// readLive reads from the API server the payloads of the Secrets keys
// that match selector: the data that the cache (see slim) does not keep. A
// key that is missing, does not match or is never synced (syncable) is
// absent from the result. It keeps the payloads and resourceVersions
// only, not the Secrets (their metadata and managedFields are most of a
// decoded Secret): a leader's first pass at N = 100,000 holds two chunks
// of them at once. inCache is how many cached Secrets a namespace has,
// which bounds what listing it reads.
func readLive(ctx context.Context, client kubernetes.Interface, selector labels.Selector, keys []ObjectKey, inCache func(namespace string) int) (map[ObjectKey]liveSecret, error) {
	byNamespace := map[string][]ObjectKey{}
	for _, k := range keys {
		byNamespace[k.Namespace] = append(byNamespace[k.Namespace], k)
	}
	out := make(map[ObjectKey]liveSecret, len(keys))
	var mu sync.Mutex
	keep := func(k ObjectKey, s *corev1.Secret) {
		if !syncable(s) {
			return
		}
		live := liveSecret{payload: payloadOf(s), resourceVersion: s.ResourceVersion}
		mu.Lock()
		out[k] = live
		mu.Unlock()
	}
	// The lists and GETs run side by side: a chunk of 2,000 Secrets spans
	// tens of namespaces.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readWorkers)
	for ns, want := range byNamespace {
		if len(want) < listMin || inCache(ns) > listMaxWaste*len(want) {
			for _, k := range want {
				g.Go(func() error {
					s, err := client.CoreV1().Secrets(k.Namespace).Get(gctx, k.Name, metav1.GetOptions{})
					if apierrors.IsNotFound(err) {
						return nil
					}
					if err != nil {
						return fmt.Errorf("read %s: %w", k, err)
					}
					if selector.Matches(labels.Set(s.Labels)) {
						keep(k, s)
					}
					return nil
				})
			}
			continue
		}
		wanted := make(map[string]bool, len(want))
		for _, k := range want {
			wanted[k.Name] = true
		}
		g.Go(func() error {
			opts := metav1.ListOptions{LabelSelector: selector.String(), Limit: listPage}
			for {
				list, err := client.CoreV1().Secrets(ns).List(gctx, opts)
				if err != nil {
					return fmt.Errorf("list secrets in %s: %w", ns, err)
				}
				for i := range list.Items {
					if s := &list.Items[i]; wanted[s.Name] {
						keep(ObjectKey{ns, s.Name}, s)
					}
				}
				if opts.Continue = list.Continue; opts.Continue == "" {
					return nil
				}
			}
		})
	}
	return out, g.Wait()
}
