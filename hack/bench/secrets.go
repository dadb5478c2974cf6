package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	syncLabel    = "kube-secret-sync" // the leader's default LABEL_SELECTOR is kube-secret-sync=true
	managedLabel = "kube-secret-sync.io/managed"
	benchLabel   = "kss-bench"
)

// key names a Secret.
type key struct{ namespace, name string }

func (k key) String() string { return k.namespace + "/" + k.name }

// digest identifies a Secret's synced content: type and data.
type digest [16]byte

func digestOf(typ corev1.SecretType, data map[string][]byte) digest {
	h := sha256.New()
	h.Write([]byte(typ))
	h.Write([]byte{0})
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%d:%s%d:", len(k), k, len(data[k]))
		h.Write(data[k])
	}
	var d digest
	copy(d[:], h.Sum(nil))
	return d
}

// tlsData is a TLS Secret's data of about 2 KiB, as cert-manager writes
// it: a certificate with ten DNS names (tls.crt), its ECDSA key (tls.key)
// and the certificate of its own issuing CA (ca.crt). Every key, serial
// number and name is fresh, so no two Secrets share content, and the key
// pair is valid: the API server checks tls.crt against tls.key on every
// write of a kubernetes.io/tls Secret, and that check is part of the cost
// measured.
func tlsData(namespace string) (map[string][]byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "bench issuer " + randomHex(8), Organization: []string{"kube-secret-sync bench"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(90 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	crt, err := issue(key, ca, caKey, namespace)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		corev1.TLSCertKey:       crt,
		corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"ca.crt":                pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
	}, nil
}

// issue returns a fresh PEM certificate for key, signed by ca.
func issue(key *ecdsa.PrivateKey, ca *x509.Certificate, caKey *ecdsa.PrivateKey, namespace string) ([]byte, error) {
	dns := make([]string, 10)
	for i := range dns {
		dns[i] = randomHex(10) + "." + namespace + ".example.com"
	}
	now := time.Now()
	leaf := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: dns[0]},
		DNSNames:     dns,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(90 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// renewedCert returns a fresh tls.crt for the key in data, as a renewal
// that keeps the key does; a throw-away CA signs it.
func renewedCert(namespace string, data map[string][]byte) ([]byte, error) {
	block, _ := pem.Decode(data[corev1.TLSPrivateKeyKey])
	if block == nil {
		return nil, errors.New("tls.key: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("tls.key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("tls.key: not an ECDSA key")
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ca := &x509.Certificate{SerialNumber: randomSerial(), Subject: pkix.Name{CommonName: "bench renewal issuer"}}
	return issue(key, ca, caKey, namespace)
}

func randomSerial() *big.Int {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return new(big.Int).SetBytes(b)
}

func randomHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// namespaceNames are count namespaces named prefix-000, prefix-001, ….
func namespaceNames(prefix string, count int) []string {
	out := make([]string, count)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

// newSecrets returns n TLS Secrets spread round-robin over namespaces,
// with their digest annotation.
// Their key pairs are made on every core.
func newSecrets(n int, namespaces []string, labels map[string]string) ([]*corev1.Secret, error) {
	out := make([]*corev1.Secret, n)
	var next atomic.Int64
	errs := make([]error, runtime.NumCPU())
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				ns := namespaces[i%len(namespaces)]
				data, err := tlsData(ns)
				if err != nil {
					errs[w] = err
					return
				}
				out[i] = &corev1.Secret{
					ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("tls-%05d", i), Labels: labels},
					Type:       corev1.SecretTypeTLS,
					Data:       data,
				}
				digestAnnotated(out[i])
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("make TLS data: %w", err)
	}
	return out, nil
}

// avgDataBytes is the mean size of the Secrets' data values.
func avgDataBytes(ss []*corev1.Secret) float64 {
	total := 0
	for _, s := range ss {
		for _, v := range s.Data {
			total += len(v)
		}
	}
	return float64(total) / float64(len(ss))
}

// newClient is a client of the cluster behind base with its own rate
// limiter. It speaks protobuf, as the daemon does.
func newClient(base *rest.Config, qps float32, burst int, agent string) (kubernetes.Interface, error) {
	rc := rest.CopyConfig(base)
	rc.QPS, rc.Burst = qps, burst
	rc.UserAgent = agent
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	// The daemon's client logs the API server's warnings; the bench's
	// own output has no use for them.
	rc.WarningHandler = rest.NoWarnings{}
	return kubernetes.NewForConfig(rc)
}

// createAll creates the namespaces, then the Secrets, with workers
// concurrent calls through client (and its rate limiter). It returns when
// all are created or at the first error.
func createAll(ctx context.Context, c kubernetes.Interface, workers int, namespaces []string, secrets []*corev1.Secret, progress func(done int)) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next, done atomic.Int64
	run := func(n int, do func(context.Context, int) error) error {
		next.Store(0)
		var wg sync.WaitGroup
		for range min(workers, n) {
			wg.Go(func() {
				for {
					i := int(next.Add(1) - 1)
					if i >= n || ctx.Err() != nil {
						return
					}
					if err := do(ctx, i); err != nil {
						cancel(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return context.Cause(ctx)
	}
	err := run(len(namespaces), func(ctx context.Context, i int) error {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespaces[i]}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", namespaces[i], err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	stopProgress := make(chan struct{})
	defer close(stopProgress)
	if progress != nil {
		go func() {
			t := time.NewTicker(10 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					return
				case <-t.C:
					progress(int(done.Load()))
				}
			}
		}()
	}
	return run(len(secrets), func(ctx context.Context, i int) error {
		s := secrets[i]
		if _, err := c.CoreV1().Secrets(s.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create secret %s/%s: %w", s.Namespace, s.Name, err)
		}
		done.Add(1)
		return nil
	})
}
