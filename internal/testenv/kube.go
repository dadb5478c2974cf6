package testenv

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ErrNoKubeAssets says the kube-apiserver and etcd binaries were not found.
var ErrNoKubeAssets = fmt.Errorf("kube-apiserver/etcd not found: set KSS_KUBE_ASSETS to the directory printed by hack/kube-assets.sh (make test does this)")

// KubeAssetsDir returns the directory holding kube-apiserver and etcd.
func KubeAssetsDir() (string, error) {
	dir := os.Getenv("KSS_KUBE_ASSETS")
	if dir == "" {
		return "", ErrNoKubeAssets
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("%w: %v", ErrNoKubeAssets, err)
		}
	}
	return dir, nil
}

// Kubectl returns the kubectl built with the API server (same version, as
// the version-skew policy wants), or the one on PATH if the assets have
// none.
func Kubectl() (string, error) {
	if dir, err := KubeAssetsDir(); err == nil {
		if bin := filepath.Join(dir, "kubectl"); isExecutable(bin) {
			return bin, nil
		}
	}
	return exec.LookPath("kubectl")
}

// ErrNoCertManager: KSS_CERT_MANAGER does not name the controllers that
// hack/cert-manager.sh builds.
var ErrNoCertManager = errors.New("cert-manager controllers not found: set KSS_CERT_MANAGER to the output of hack/cert-manager.sh")

// CertManagerBinary returns the cert-manager controllers' binary that
// hack/cert-manager.sh built (KSS_CERT_MANAGER).
func CertManagerBinary() (string, error) { return binaryFrom("KSS_CERT_MANAGER", ErrNoCertManager) }

// ErrNoHelm: KSS_HELM does not name the helm that hack/helm.sh builds.
var ErrNoHelm = errors.New("helm not found: set KSS_HELM to the output of hack/helm.sh")

// Helm returns the helm binary that hack/helm.sh built (KSS_HELM).
func Helm() (string, error) { return binaryFrom("KSS_HELM", ErrNoHelm) }

// ErrNoPromtool: KSS_PROMTOOL does not name the promtool that
// hack/promtool.sh builds.
var ErrNoPromtool = errors.New("promtool not found: set KSS_PROMTOOL to the output of hack/promtool.sh")

// Promtool returns Prometheus's promtool that hack/promtool.sh built
// (KSS_PROMTOOL).
func Promtool() (string, error) { return binaryFrom("KSS_PROMTOOL", ErrNoPromtool) }

// binaryFrom returns the executable that the variable env names, or
// missing.
func binaryFrom(env string, missing error) (string, error) {
	bin := os.Getenv(env)
	if bin == "" || !isExecutable(bin) {
		return "", missing
	}
	return bin, nil
}

// KubeVersion is the version of the kube-apiserver in the assets (their
// VERSION file), such as v1.36.3.
func KubeVersion() (string, error) {
	dir, err := KubeAssetsDir()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(dir, "VERSION"))
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoKubeAssets, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&0o111 != 0
}

// Cluster is one simulated Kubernetes cluster: its own etcd and
// kube-apiserver, reachable as an administrator through Config, Clientset or
// the kubeconfig file at Kubeconfig.
type Cluster struct {
	Name       string
	Kubeconfig string
	Config     *rest.Config
	Clientset  kubernetes.Interface

	dir       string
	etcd      *process
	apiserver *process
}

// StartCluster starts etcd and kube-apiserver from assets on free ports
// and waits until the API server reports ready.
func StartCluster(ctx context.Context, assets, name string) (c *Cluster, err error) {
	for range startAttempts {
		if c, err = startCluster(ctx, assets, name); !addrInUse(err) {
			break
		}
	}
	return c, err
}

func startCluster(ctx context.Context, assets, name string) (*Cluster, error) {
	dir, err := tempDir("cluster-" + name)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Name: name, dir: dir}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()

	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	c.etcd, err = startProcess(name+" etcd", nil, dir, filepath.Join(assets, "etcd"),
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL,
		"--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL,
		"--unsafe-no-fsync",
		"--log-level", "warn",
	)
	if err != nil {
		return nil, err
	}

	// The service-account key is required by kube-apiserver even when no
	// service-account tokens are ever issued.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	keyFile := filepath.Join(dir, "sa.key")
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	token := randomToken()
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(token+",admin,admin-uid,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	certDir := filepath.Join(dir, "certs")
	securePort := ports[2]
	c.apiserver, err = startProcess(name+" kube-apiserver", nil, dir, filepath.Join(assets, "kube-apiserver"),
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(securePort),
		"--cert-dir", certDir,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", keyFile,
		"--service-account-signing-key-file", keyFile,
		"--service-cluster-ip-range", "10.0.0.0/24",
		"--token-auth-file", tokenFile,
		"--authorization-mode", "RBAC",
		"--v", "0",
	)
	if err != nil {
		return nil, err
	}

	host := fmt.Sprintf("https://127.0.0.1:%d", securePort)
	caFile := filepath.Join(certDir, "apiserver.crt")
	c.Config = &rest.Config{
		Host:            host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: caFile},
		QPS:             200,
		Burst:           400,
	}
	if err := c.waitReady(ctx, caFile); err != nil {
		return nil, err
	}
	if c.Clientset, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, err
	}
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, name, host, caFile, token); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

func (c *Cluster) waitReady(ctx context.Context, caFile string) error {
	// As long as Clusters allows a start: on 2 cores a third control plane
	// starting while another package's race-enabled tests run was seen to
	// need more than 90 s.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	alive := func() error {
		if err := c.etcd.exited(); err != nil {
			return err
		}
		return c.apiserver.exited()
	}
	// The CA file appears once the API server has written its self-signed
	// certificate; only then can a client verify it.
	err := poll(ctx, 100*time.Millisecond, alive, func(ctx context.Context) bool {
		if _, err := os.Stat(caFile); err != nil {
			return false
		}
		return c.ready(ctx)
	})
	if err != nil {
		return fmt.Errorf("wait for %s kube-apiserver: %w", c.Name, err)
	}
	return nil
}

// PauseAPIServer stops the cluster's kube-apiserver (etcd keeps its
// data), simulating an API-server outage; ResumeAPIServer starts it again
// on the same address with the same certificate.
func (c *Cluster) PauseAPIServer() { c.apiserver.stop(syscall.SIGTERM, 10*time.Second) }

// APIServerLog is the end of the kube-apiserver's log (its last 64 KiB).
func (c *Cluster) APIServerLog() string { return c.apiserver.log.String() }

// Pids are the process ids of the cluster's kube-apiserver and etcd.
func (c *Cluster) Pids() (apiserver, etcd int) {
	return c.apiserver.cmd.Process.Pid, c.etcd.cmd.Process.Pid
}

// FreezeAPIServer stops the kube-apiserver process with SIGSTOP: its
// connections stay open but nothing is answered, as with a hung server.
// ThawAPIServer (SIGCONT) lets it go on.
func (c *Cluster) FreezeAPIServer() error { return c.apiserver.cmd.Process.Signal(syscall.SIGSTOP) }

// ThawAPIServer resumes an API server stopped by FreezeAPIServer.
func (c *Cluster) ThawAPIServer() error { return c.apiserver.cmd.Process.Signal(syscall.SIGCONT) }

// ResumeAPIServer restarts a paused API server and waits until it is ready.
func (c *Cluster) ResumeAPIServer(ctx context.Context) error {
	p, err := c.apiserver.restart()
	if err != nil {
		return err
	}
	c.apiserver = p
	return c.waitReady(ctx, c.Config.TLSClientConfig.CAFile)
}

func (c *Cluster) ready(ctx context.Context) bool {
	rt, err := rest.TransportFor(c.Config)
	if err != nil {
		return false
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Config.Host+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := (&http.Client{Transport: rt, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Stop ends the API server, then etcd, and removes the cluster's files.
func (c *Cluster) Stop() {
	if c == nil {
		return
	}
	c.apiserver.stop(syscall.SIGTERM, 5*time.Second)
	c.etcd.stop(syscall.SIGTERM, 5*time.Second)
	os.RemoveAll(c.dir)
}

func writeKubeconfig(path, name, host, caFile, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: host, CertificateAuthority: caFile}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	return clientcmd.WriteToFile(*cfg, path)
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
