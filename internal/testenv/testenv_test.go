package testenv

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) { os.Exit(Run(m)) }

func TestClustersAreIsolated(t *testing.T) {
	cs := Clusters(t, 2)
	a, b := cs[0], cs[1]
	if a.Config.Host == b.Config.Host {
		t.Fatalf("both clusters serve %s", a.Config.Host)
	}
	ns := Namespace(t, a)
	mustCreateSecret(t, a.Clientset, ns, "only-in-a")
	if _, err := b.Clientset.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace %s in cluster b: err = %v; want NotFound", ns, err)
	}
	if _, err := b.Clientset.CoreV1().Secrets(ns).Get(t.Context(), "only-in-a", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("secret only-in-a in cluster b: err = %v; want NotFound", err)
	}
	// A token of one cluster is not accepted by the other.
	cross := *b.Config
	cross.BearerToken = a.Config.BearerToken
	if _, err := kubernetes.NewForConfigOrDie(&cross).CoreV1().Namespaces().List(t.Context(), metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("cluster a's token on cluster b: err = %v; want Unauthorized", err)
	}
}

func TestSecretLifecycle(t *testing.T) {
	for _, c := range Clusters(t, 2) {
		t.Run(c.Name, func(t *testing.T) {
			ns := Namespace(t, c)
			secrets := c.Clientset.CoreV1().Secrets(ns)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			const selector = "kube-secret-sync=true"
			w, err := secrets.Watch(ctx, metav1.ListOptions{LabelSelector: selector})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()

			mustCreateSecret(t, c.Clientset, ns, "s1")
			// An unlabelled Secret must stay out of the list and the watch.
			if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "unlabelled"}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			list, err := secrets.List(ctx, metav1.ListOptions{LabelSelector: selector})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Items) != 1 || list.Items[0].Name != "s1" {
				t.Errorf("List(%s) = %d items; want exactly s1", selector, len(list.Items))
			}
			s, err := secrets.Get(ctx, "s1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			s.Data["extra"] = []byte("x")
			if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := secrets.Delete(ctx, "s1", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			for _, want := range []watch.EventType{watch.Added, watch.Modified, watch.Deleted} {
				select {
				case ev := <-w.ResultChan():
					got, _ := ev.Object.(*corev1.Secret)
					if ev.Type != want || got == nil || got.Name != "s1" {
						t.Fatalf("watch event = %s %T; want %s of s1", ev.Type, ev.Object, want)
					}
				case <-ctx.Done():
					t.Fatalf("no %s event: %v", want, ctx.Err())
				}
			}
		})
	}
}

func TestKubeconfigFile(t *testing.T) {
	c := Clusters(t, 1)[0]
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(t.Context(), "default", metav1.GetOptions{}); err != nil {
		t.Errorf("get namespace default through %s: %v", c.Kubeconfig, err)
	}
}

func TestPostgresDatabasePerTest(t *testing.T) {
	dsn1, dsn2 := PostgresDSN(t), PostgresDSN(t)
	if dsn1 == dsn2 {
		t.Fatalf("two calls returned the same DSN %s", dsn1)
	}
	ctx := t.Context()
	c1 := MustConnect(t, dsn1)
	c2 := MustConnect(t, dsn2)
	if _, err := c1.Exec(ctx, "CREATE TABLE only_here (id int)"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := c2.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'only_here'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("table created in one database is visible in the other")
	}
	var version string
	if err := c1.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	t.Logf("PostgreSQL %s", version)
}

func mustCreateSecret(tb testing.TB, cs kubernetes.Interface, ns, name string) {
	tb.Helper()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kube-secret-sync": "true"}},
		Data:       map[string][]byte{"k": []byte("v")},
	}
	if _, err := cs.CoreV1().Secrets(ns).Create(tb.Context(), s, metav1.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
}

// TestDelayProxy: a round trip through the proxy costs twice its delay,
// and a bulk transfer is not slowed beyond that.
func TestDelayProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	const oneWay = 25 * time.Millisecond
	p, err := StartDelayProxy(ln.Addr().String(), oneWay)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1)
	for range 3 {
		start := time.Now()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		if rtt := time.Since(start); rtt < 2*oneWay {
			t.Errorf("round trip %v; want at least %v", rtt, 2*oneWay)
		}
	}
	// 32 MiB there and back: far less than 32 MiB per round trip would take.
	data := bytes.Repeat([]byte("0123456789abcdef"), 2<<20)
	start := time.Now()
	go func() { _, _ = c.Write(data) }()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second || !bytes.Equal(got, data) {
		t.Errorf("32 MiB echoed in %v (equal %v); want well under 5s, unchanged", took, bytes.Equal(got, data))
	}
}
