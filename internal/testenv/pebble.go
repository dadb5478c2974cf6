package testenv

// Pebble, Let's Encrypt's ACME test server, with pebble-challtestsrv as its
// DNS server, for tests that issue certificates over ACME HTTP-01 as Let's
// Encrypt does: Pebble resolves the name through the DNS server and fetches
// http://<name>:80/.well-known/acme-challenge/<token>.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ErrNoPebble: KSS_PEBBLE does not name the directory that hack/pebble.sh
// fills.
var ErrNoPebble = errors.New("pebble not found: set KSS_PEBBLE to the directory printed by hack/pebble.sh (make test does this)")

// PebbleDir returns the directory holding pebble and pebble-challtestsrv
// (KSS_PEBBLE).
func PebbleDir() (string, error) {
	dir := os.Getenv("KSS_PEBBLE")
	if dir == "" || !isExecutable(filepath.Join(dir, "pebble")) || !isExecutable(filepath.Join(dir, "pebble-challtestsrv")) {
		return "", ErrNoPebble
	}
	return dir, nil
}

// Pebble is a running ACME server.
type Pebble struct {
	// DirectoryURL is the ACME directory, served over TLS with a
	// certificate from CABundle (PEM).
	DirectoryURL string
	CABundle     []byte
	// DNSAddr is the DNS server (UDP and TCP) that Pebble resolves names
	// with: it answers every A query with the address given to
	// StartPebble, and no AAAA query.
	DNSAddr string

	management string // Pebble's management interface, for its roots
	client     *http.Client
	dir        string
	pebble     *process
	dns        *process
}

// StartPebble starts Pebble and its DNS server, which resolves every name
// to answer (an IPv4 address). Pebble validates HTTP-01 challenges on port
// 80 of that address, without its usual random delays.
func StartPebble(ctx context.Context, answer string) (p *Pebble, err error) {
	for range startAttempts {
		if p, err = startPebble(ctx, answer); !addrInUse(err) {
			break
		}
	}
	return p, err
}

func startPebble(ctx context.Context, answer string) (*Pebble, error) {
	bin, err := PebbleDir()
	if err != nil {
		return nil, err
	}
	dir, err := tempDir("pebble")
	if err != nil {
		return nil, err
	}
	p := &Pebble{dir: dir}
	ok := false
	defer func() {
		if !ok {
			p.Stop()
		}
	}()
	var ports [4]int
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	p.DNSAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	p.dns, err = startProcess("pebble-challtestsrv", nil, dir, filepath.Join(bin, "pebble-challtestsrv"),
		"-dnsserver", p.DNSAddr,
		"-management", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"-defaultIPv4", answer, "-defaultIPv6", "",
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "")
	if err != nil {
		return nil, err
	}

	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if p.CABundle, err = writeServingCert(certFile, keyFile); err != nil {
		return nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", ports[2])
	p.management = fmt.Sprintf("127.0.0.1:%d", ports[3])
	config, err := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":                  listen,
		"managementListenAddress":        p.management,
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       80,
		"tlsPort":                        443,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles":                       map[string]any{"default": map[string]any{"description": "90 days", "validityPeriod": 7776000}},
	}})
	if err != nil {
		return nil, err
	}
	configFile := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(configFile, config, 0o600); err != nil {
		return nil, err
	}
	p.pebble, err = startProcessEnv("pebble", []string{
		"PEBBLE_VA_NOSLEEP=1",      // no random delay before each validation
		"PEBBLE_WFE_NONCEREJECT=0", // no random badNonce rejections
	}, nil, dir, filepath.Join(bin, "pebble"), "-config", configFile, "-dnsserver", p.DNSAddr)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.CABundle)
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	p.DirectoryURL = "https://" + listen + "/dir"

	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	check := func() error { return errors.Join(p.dns.exited(), p.pebble.exited()) }
	err = poll(ctx, 50*time.Millisecond, check, func(ctx context.Context) bool {
		if _, err := p.get(ctx, p.DirectoryURL); err != nil {
			return false
		}
		c, err := net.DialTimeout("tcp", p.DNSAddr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("wait for pebble: %w", err)
	}
	ok = true
	return p, nil
}

// Root returns the root certificate (PEM) that Pebble's certificates chain
// to. Pebble makes a new one each time it starts.
func (p *Pebble) Root(ctx context.Context) ([]byte, error) {
	return p.get(ctx, "https://"+p.management+"/roots/0")
}

func (p *Pebble) get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, err
}

// Stop ends both servers and removes their files.
func (p *Pebble) Stop() {
	p.pebble.stop(syscall.SIGTERM, 5*time.Second)
	p.dns.stop(syscall.SIGTERM, 5*time.Second)
	os.RemoveAll(p.dir)
}

// writeServingCert writes a certificate for 127.0.0.1 and localhost, and
// its key, and returns the certificate of the CA that signed it (PEM),
// made afresh so that nothing expires under the tests.
func writeServingCert(certFile, keyFile string) ([]byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kube-secret-sync test CA for Pebble"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), nil
}
