package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The demo's verdicts rest on diffSecret: a comparison that misses a
// difference would make the demo pass vacuously.
func TestDiffSecret(t *testing.T) {
	yes := true
	src := &corev1.Secret{
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": []byte("cert"), "tls.key": []byte("key")},
	}
	tests := []struct {
		name string
		cp   corev1.Secret
		want []string
	}{
		{"equal", corev1.Secret{Type: corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": []byte("cert"), "tls.key": []byte("key")}}, nil},
		{"type", corev1.Secret{Type: corev1.SecretTypeOpaque, Data: src.Data}, []string{"type is Opaque, want kubernetes.io/tls"}},
		{"immutable", corev1.Secret{Type: corev1.SecretTypeTLS, Data: src.Data, Immutable: &yes}, []string{"immutable is true, want false"}},
		{"missing key", corev1.Secret{Type: corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": []byte("cert")}}, []string{"data[tls.key] is missing"}},
		{"extra key", corev1.Secret{Type: corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": []byte("cert"), "tls.key": []byte("key"), "ca.crt": nil}}, []string{"data[ca.crt] is not in the source"}},
		{"changed value", corev1.Secret{Type: corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": []byte("cert2"), "tls.key": []byte("key")}}, []string{"data[tls.crt] differs"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := diffSecret(src, &tt.cp); !slices.Equal(got, tt.want) {
				t.Errorf("diffSecret = %q; want %q", got, tt.want)
			}
		})
	}
	if got := diffSecret(&corev1.Secret{}, &corev1.Secret{Type: corev1.SecretTypeOpaque}); len(got) != 0 {
		t.Errorf("diffSecret(no type, Opaque) = %q; want none (the API server defaults to Opaque)", got)
	}
}

func TestNewCertificate(t *testing.T) {
	now := time.Now()
	c, err := newCertificate("www.example.com", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(c.certPEM, c.keyPEM); err != nil {
		t.Errorf("key pair: %v", err)
	}
	block, _ := pem.Decode(c.certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "www.example.com", Roots: roots, CurrentTime: now}); err != nil {
		t.Errorf("verify as its own CA: %v", err)
	}
	c2, err := newCertificate("www.example.com", now)
	if err != nil {
		t.Fatal(err)
	}
	if string(c2.certPEM) == string(c.certPEM) || c2.serial.Cmp(c.serial) == 0 {
		t.Error("a renewed certificate equals the first")
	}
}

func TestParseMetric(t *testing.T) {
	const exposition = `# HELP x_total Help.
# TYPE x_total counter
x_total_created 12
x_total{reason="a"} 7
x_total 3
`
	tests := []struct {
		name    string
		want    float64
		wantErr bool
	}{
		{"x_total", 3, false},
		{"x_total_created", 12, false},
		{"y_total", 0, true},
	}
	for _, tt := range tests {
		got, err := parseMetric(exposition, tt.name)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("parseMetric(%q) = %v, %v; want %v, error %t", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestEntropy(t *testing.T) {
	all := make([]byte, 256*8)
	for i := range all {
		all[i] = byte(i)
	}
	if h := entropy(all); h != 8 {
		t.Errorf("entropy(every byte equally often) = %v; want 8", h)
	}
	if h := entropy([]byte("aaaa")); h != 0 {
		t.Errorf("entropy(aaaa) = %v; want 0", h)
	}
}
