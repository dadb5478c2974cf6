package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

const (
	host       = "www.example.com"
	tlsName    = "www-example-com-tls"
	localName  = "local-only"
	markerName = "after-local-only"
	syncLabel  = "kube-secret-sync" // the leader's default LABEL_SELECTOR is kube-secret-sync=true

	// The follower's marks on a copy (see secrets.go).
	managedLabel          = "kube-secret-sync.io/managed"
	lastUpdatedAnnotation = "kube-secret-sync-last-updated"
	sourceAnnotation      = "kube-secret-sync.io/source-cluster"
	versionAnnotation     = "kube-secret-sync.io/version"
)

// stepCreate: a labelled TLS Secret created in cluster-a appears in
// cluster-b, in a namespace the follower creates, equal in type and data.
func (d *demo) stepCreate(ctx context.Context) error {
	cert, err := newCertificate(host, time.Now())
	if err != nil {
		return err
	}
	src := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   demoNS,
			Name:        tlsName,
			Labels:      map[string]string{syncLabel: "true"},
			Annotations: map[string]string{"cert-manager.io/common-name": host},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{
			corev1.TLSCertKey:       cert.certPEM,
			corev1.TLSPrivateKeyKey: cert.keyPEM,
			// A self-signed certificate is its own CA, as with
			// cert-manager's SelfSigned issuer.
			"ca.crt": cert.certPEM,
		},
	}
	start := time.Now()
	created, err := d.a.CoreV1().Secrets(demoNS).Create(ctx, src, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create %s/%s in %s: %w", demoNS, tlsName, testenv.ClusterA, err)
	}
	d.out.info("created %s/%s in %s: type %s, keys %s, label %s=true",
		demoNS, tlsName, testenv.ClusterA, created.Type, strings.Join(sortedKeys(created.Data), ", "), syncLabel)
	d.out.info("its certificate: %s", cert)

	var cp *corev1.Secret
	took, err := d.waitFor(ctx, start, func(ctx context.Context) error {
		got, err := d.b.CoreV1().Secrets(demoNS).Get(ctx, tlsName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if diffs := diffSecret(created, got); len(diffs) > 0 {
			return errors.New(strings.Join(diffs, "; "))
		}
		cp = got
		return nil
	})
	if err != nil {
		return fmt.Errorf("copy of %s/%s in %s: %w", demoNS, tlsName, testenv.ClusterB, err)
	}
	d.out.ok("appeared in %s after %s", testenv.ClusterB, secs(took))
	d.record("created in cluster-a → copied to cluster-b", "after "+secs(took))

	ns, err := d.b.CoreV1().Namespaces().Get(ctx, demoNS, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("namespace %s in %s: %w", demoNS, testenv.ClusterB, err)
	}
	d.out.ok("namespace %s exists in %s: the follower created it (%s)", demoNS, testenv.ClusterB, ns.CreationTimestamp.Format(time.TimeOnly))
	d.out.ok("same type (%s), immutable (%t) and data, byte for byte: %s",
		cp.Type, cp.Immutable != nil && *cp.Immutable, sizes(cp.Data))
	if _, err := tls.X509KeyPair(cp.Data[corev1.TLSCertKey], cp.Data[corev1.TLSPrivateKeyKey]); err != nil {
		return fmt.Errorf("tls.crt and tls.key in %s: %w", testenv.ClusterB, err)
	}
	d.out.ok("tls.crt and tls.key in %s form a valid key pair", testenv.ClusterB)

	if err := checkMarks(cp, testenv.ClusterA); err != nil {
		return err
	}
	d.out.ok("the copy carries the follower's marks:")
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	var carried []string
	for _, k := range sortedKeys(cp.Labels) {
		if isMark(k) {
			fmt.Fprintf(tw, "label\t%s=%s\n", k, cp.Labels[k])
		} else {
			carried = append(carried, "label "+k+"="+cp.Labels[k])
		}
	}
	for _, k := range sortedKeys(cp.Annotations) {
		if isMark(k) {
			fmt.Fprintf(tw, "annotation\t%s=%s\n", k, cp.Annotations[k])
		} else {
			carried = append(carried, "annotation "+k+"="+cp.Annotations[k])
		}
	}
	tw.Flush()
	d.out.block(sb.String())
	if len(carried) > 0 {
		d.out.info("carried over from the source: %s", strings.Join(carried, ", "))
	}
	return nil
}

// stepDatabase shows the rows and checks that nothing of the Secret is
// readable in them.
func (d *demo) stepDatabase(ctx context.Context) error {
	const query = `SELECT namespace, name, key_id, tombstone, version, length(ciphertext) FROM kss_secrets`
	d.out.info("%s", query)
	rows, err := d.db.Query(ctx, query+` ORDER BY version, namespace, name`)
	if err != nil {
		return fmt.Errorf("query kss_secrets: %w", err)
	}
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "namespace\tname\tkey_id\ttombstone\tversion\tlength(ciphertext)")
	var n int
	var ns, name, keyID string
	var tombstone bool
	var version, length int64
	_, err = pgx.ForEachRow(rows, []any{&ns, &name, &keyID, &tombstone, &version, &length}, func() error {
		n++
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%d\t%d\n", ns, name, keyID, tombstone, version, length)
		return nil
	})
	if err != nil {
		return fmt.Errorf("query kss_secrets: %w", err)
	}
	tw.Flush()
	d.out.block(sb.String())

	src, err := d.a.CoreV1().Secrets(demoNS).Get(ctx, tlsName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	var ciphertext []byte
	err = d.db.QueryRow(ctx, `SELECT ciphertext FROM kss_secrets WHERE namespace = $1 AND name = $2`, demoNS, tlsName).Scan(&ciphertext)
	if err != nil {
		return fmt.Errorf("read the row of %s/%s: %w", demoNS, tlsName, err)
	}
	// What a reader might look for: the certificate and key as stored in
	// the Secret, as base64 (how JSON carries bytes), as DER, and the
	// Secret's key names, type and annotations.
	needles := map[string][]byte{
		`"BEGIN CERTIFICATE"`: []byte("BEGIN CERTIFICATE"),
		`"PRIVATE KEY"`:       []byte("PRIVATE KEY"),
		"tls.crt bytes":       src.Data[corev1.TLSCertKey],
		"tls.crt in base64":   []byte(base64.StdEncoding.EncodeToString(src.Data[corev1.TLSCertKey])),
		"tls.key bytes":       src.Data[corev1.TLSPrivateKeyKey],
		"tls.key in base64":   []byte(base64.StdEncoding.EncodeToString(src.Data[corev1.TLSPrivateKeyKey])),
		`"tls.crt"`:           []byte(corev1.TLSCertKey),
		`"ca.crt"`:            []byte("ca.crt"),
		`"kubernetes.io/tls"`: []byte(corev1.SecretTypeTLS),
		`"` + host + `"`:      []byte(host),
	}
	if block, _ := pem.Decode(src.Data[corev1.TLSCertKey]); block != nil {
		needles["certificate DER"] = block.Bytes
	}
	var found []string
	for _, what := range sortedKeys(needles) {
		if bytes.Contains(ciphertext, needles[what]) {
			found = append(found, what)
		}
	}
	if len(found) > 0 {
		return fmt.Errorf("the ciphertext of %s/%s contains %s", demoNS, tlsName, strings.Join(found, ", "))
	}
	d.out.ok("none of these %d is in the ciphertext of %s/%s (%d bytes):", len(needles), demoNS, tlsName, len(ciphertext))
	d.out.block(wrap(strings.Join(sortedKeys(needles), ", "), 72))
	h := entropy(ciphertext)
	if h < 7.5 {
		return fmt.Errorf("the ciphertext of %s/%s has %.2f bits of entropy per byte; random data has close to 8", demoNS, tlsName, h)
	}
	d.out.ok("it looks random: %.2f bits of entropy per byte (the PEM text has %.2f)", h, entropy(src.Data[corev1.TLSCertKey]))
	d.out.info("only namespace and name are readable; type, keys, labels and annotations are inside the ciphertext")
	d.record("database holds the Secret", fmt.Sprintf("as ciphertext only (%d row(s); no certificate, key name or type in it)", n))
	return nil
}

// stepRenew: new certificate bytes and a removed key reach the copy.
func (d *demo) stepRenew(ctx context.Context) error {
	cur, err := d.a.CoreV1().Secrets(demoNS).Get(ctx, tlsName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	cert, err := newCertificate(host, time.Now())
	if err != nil {
		return err
	}
	upd := cur.DeepCopy()
	upd.Data = map[string][]byte{corev1.TLSCertKey: cert.certPEM, corev1.TLSPrivateKeyKey: cert.keyPEM}
	start := time.Now()
	updated, err := d.a.CoreV1().Secrets(demoNS).Update(ctx, upd, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update %s/%s in %s: %w", demoNS, tlsName, testenv.ClusterA, err)
	}
	d.out.info("renewed in %s: new key and certificate (%s), ca.crt removed", testenv.ClusterA, cert)
	var cp *corev1.Secret
	took, err := d.waitFor(ctx, start, func(ctx context.Context) error {
		got, err := d.b.CoreV1().Secrets(demoNS).Get(ctx, tlsName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if diffs := diffSecret(updated, got); len(diffs) > 0 {
			return errors.New(strings.Join(diffs, "; "))
		}
		cp = got
		return nil
	})
	if err != nil {
		return fmt.Errorf("renewal of %s/%s in %s: %w", demoNS, tlsName, testenv.ClusterB, err)
	}
	d.out.ok("%s has the new certificate and no ca.crt after %s", testenv.ClusterB, secs(took))
	d.out.ok("data byte for byte: %s; copy version %s", sizes(cp.Data), cp.Annotations[versionAnnotation])
	d.record("renewed in cluster-a (ca.crt removed) → cluster-b", "after "+secs(took))
	return nil
}

// stepUnmanaged: a same-named Secret that the follower does not manage is
// left alone and reported.
func (d *demo) stepUnmanaged(ctx context.Context) error {
	local := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: demoNS, Name: localName, Labels: map[string]string{"owner": "team-b"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"password": []byte("cluster-b's own value")},
	}
	local, err := d.b.CoreV1().Secrets(demoNS).Create(ctx, local, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create %s/%s in %s: %w", demoNS, localName, testenv.ClusterB, err)
	}
	d.out.info("created %s/%s in %s without the %s label (resourceVersion %s)", demoNS, localName, testenv.ClusterB, managedLabel, local.ResourceVersion)
	if _, err := d.a.CoreV1().Secrets(demoNS).Create(ctx, labelled(localName, "cluster-a's value"), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create %s/%s in %s: %w", demoNS, localName, testenv.ClusterA, err)
	}
	d.out.info("created a labelled %s/%s in %s", demoNS, localName, testenv.ClusterA)

	// Wait for the leader's row, then send a marker after it: rows are
	// applied in version order, so once the marker is in cluster-b the
	// follower has dealt with the conflicting row.
	var rowVersion int64
	took, err := d.waitFor(ctx, time.Now(), func(ctx context.Context) error {
		return d.db.QueryRow(ctx, `SELECT version FROM kss_secrets WHERE namespace = $1 AND name = $2`, demoNS, localName).Scan(&rowVersion)
	})
	if err != nil {
		return fmt.Errorf("the leader's row for %s/%s: %w", demoNS, localName, err)
	}
	d.out.ok("the leader wrote row %s/%s, version %d, after %s", demoNS, localName, rowVersion, secs(took))
	start := time.Now()
	if _, err := d.a.CoreV1().Secrets(demoNS).Create(ctx, labelled(markerName, "marker"), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create %s/%s in %s: %w", demoNS, markerName, testenv.ClusterA, err)
	}
	var markerVersion int64
	took, err = d.waitFor(ctx, start, func(ctx context.Context) error {
		got, err := d.b.CoreV1().Secrets(demoNS).Get(ctx, markerName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		markerVersion, err = strconv.ParseInt(got.Annotations[versionAnnotation], 10, 64)
		return err
	})
	if err != nil {
		return fmt.Errorf("marker %s/%s in %s: %w", demoNS, markerName, testenv.ClusterB, err)
	}
	if markerVersion <= rowVersion {
		return fmt.Errorf("marker %s/%s has version %d, not after %d", demoNS, markerName, markerVersion, rowVersion)
	}
	d.out.ok("a later labelled Secret %s/%s (version %d) reached %s after %s: the follower is past version %d",
		demoNS, markerName, markerVersion, testenv.ClusterB, secs(took), rowVersion)

	got, err := d.b.CoreV1().Secrets(demoNS).Get(ctx, localName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("%s/%s in %s: %w", demoNS, localName, testenv.ClusterB, err)
	}
	switch {
	case got.UID != local.UID:
		return fmt.Errorf("%s/%s in %s was replaced (uid %s, was %s)", demoNS, localName, testenv.ClusterB, got.UID, local.UID)
	case got.ResourceVersion != local.ResourceVersion:
		return fmt.Errorf("%s/%s in %s was modified (resourceVersion %s, was %s)", demoNS, localName, testenv.ClusterB, got.ResourceVersion, local.ResourceVersion)
	case !dataEqual(got.Data, local.Data) || got.Labels[managedLabel] != "":
		return fmt.Errorf("%s/%s in %s changed", demoNS, localName, testenv.ClusterB)
	}
	d.out.ok("%s/%s in %s is untouched: same uid, resourceVersion %s, its own data", demoNS, localName, testenv.ClusterB, got.ResourceVersion)

	var event *corev1.Event
	_, err = d.waitFor(ctx, start, func(ctx context.Context) error {
		list, err := d.b.CoreV1().Events(demoNS).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Secret,involvedObject.name=" + localName,
		})
		if err != nil {
			return err
		}
		for i := range list.Items {
			e := &list.Items[i]
			if e.Type == corev1.EventTypeWarning && e.Reason == "NotManaged" && e.InvolvedObject.UID == local.UID {
				event = e
				return nil
			}
		}
		return fmt.Errorf("no Warning NotManaged Event on %s/%s among %d Events", demoNS, localName, len(list.Items))
	})
	if err != nil {
		return fmt.Errorf("event in %s: %w", testenv.ClusterB, err)
	}
	d.out.ok("a Warning Event on it in %s (kubectl describe shows it):", testenv.ClusterB)
	d.out.block(fmt.Sprintf("%s  %s  %s", event.Type, event.Reason, event.Message))
	if v, err := d.follower.metric(ctx, "kube_secret_sync_unmanaged_conflicts_total"); err == nil {
		d.out.info("the follower's metric kube_secret_sync_unmanaged_conflicts_total is %g", v)
	}
	d.record("same-named unmanaged Secret in cluster-b", "left alone, Warning NotManaged Event")
	return nil
}

// stepUnlabel: removing the label in cluster-a deletes the copy.
func (d *demo) stepUnlabel(ctx context.Context) error {
	cur, err := d.a.CoreV1().Secrets(demoNS).Get(ctx, tlsName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	upd := cur.DeepCopy()
	delete(upd.Labels, syncLabel)
	start := time.Now()
	if _, err := d.a.CoreV1().Secrets(demoNS).Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("unlabel %s/%s in %s: %w", demoNS, tlsName, testenv.ClusterA, err)
	}
	d.out.info("removed the label %s from %s/%s in %s (the Secret stays there)", syncLabel, demoNS, tlsName, testenv.ClusterA)
	took, err := d.waitFor(ctx, start, func(ctx context.Context) error {
		_, err := d.b.CoreV1().Secrets(demoNS).Get(ctx, tlsName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("%s/%s still in %s", demoNS, tlsName, testenv.ClusterB)
	})
	if err != nil {
		return fmt.Errorf("removal of %s/%s from %s: %w", demoNS, tlsName, testenv.ClusterB, err)
	}
	d.out.ok("the copy is gone from %s after %s", testenv.ClusterB, secs(took))
	var tombstone bool
	var version int64
	err = d.db.QueryRow(ctx, `SELECT tombstone, version FROM kss_secrets WHERE namespace = $1 AND name = $2`, demoNS, tlsName).Scan(&tombstone, &version)
	if err != nil {
		return fmt.Errorf("read the row of %s/%s: %w", demoNS, tlsName, err)
	}
	if !tombstone {
		return fmt.Errorf("the row of %s/%s is not a tombstone", demoNS, tlsName)
	}
	d.out.ok("its row is now a tombstone (version %d)", version)
	if _, err := d.b.CoreV1().Secrets(demoNS).Get(ctx, localName, metav1.GetOptions{}); err != nil {
		return fmt.Errorf("the unmanaged %s/%s in %s: %w", demoNS, localName, testenv.ClusterB, err)
	}
	d.record("unlabelled in cluster-a → removed from cluster-b", "after "+secs(took))
	return nil
}

// labelled is an Opaque Secret in demoNS that the leader syncs.
func labelled(name, value string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: demoNS, Name: name, Labels: map[string]string{syncLabel: "true"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"value": []byte(value)},
	}
}

// diffSecret lists how a follower's copy differs from its source in type,
// immutable and data, the content the demo requires to be identical.
func diffSecret(src, cp *corev1.Secret) []string {
	var diffs []string
	if t, u := secretType(src), secretType(cp); t != u {
		diffs = append(diffs, fmt.Sprintf("type is %s, want %s", u, t))
	}
	if a, b := src.Immutable != nil && *src.Immutable, cp.Immutable != nil && *cp.Immutable; a != b {
		diffs = append(diffs, fmt.Sprintf("immutable is %t, want %t", b, a))
	}
	for _, k := range sortedKeys(src.Data) {
		v, ok := cp.Data[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("data[%s] is missing", k))
		case !bytes.Equal(v, src.Data[k]):
			diffs = append(diffs, fmt.Sprintf("data[%s] differs", k))
		}
	}
	for _, k := range sortedKeys(cp.Data) {
		if _, ok := src.Data[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("data[%s] is not in the source", k))
		}
	}
	return diffs
}

func secretType(s *corev1.Secret) corev1.SecretType {
	if s.Type == "" {
		return corev1.SecretTypeOpaque
	}
	return s.Type
}

func dataEqual(a, b map[string][]byte) bool {
	return len(diffSecret(&corev1.Secret{Data: a}, &corev1.Secret{Data: b})) == 0
}

func isMark(key string) bool {
	return strings.HasPrefix(key, "kube-secret-sync.io/") || key == lastUpdatedAnnotation
}

// checkMarks checks the follower's management label and annotations.
func checkMarks(s *corev1.Secret, source string) error {
	if v := s.Labels[managedLabel]; v != "true" {
		return fmt.Errorf("copy %s/%s: label %s is %q, want \"true\"", s.Namespace, s.Name, managedLabel, v)
	}
	if v := s.Annotations[sourceAnnotation]; v != source {
		return fmt.Errorf("copy %s/%s: annotation %s is %q, want %q", s.Namespace, s.Name, sourceAnnotation, v, source)
	}
	if v, err := strconv.ParseInt(s.Annotations[versionAnnotation], 10, 64); err != nil || v < 1 {
		return fmt.Errorf("copy %s/%s: annotation %s is %q, want a row version", s.Namespace, s.Name, versionAnnotation, s.Annotations[versionAnnotation])
	}
	if _, err := time.Parse(time.RFC3339Nano, s.Annotations[lastUpdatedAnnotation]); err != nil {
		return fmt.Errorf("copy %s/%s: annotation %s is %q, want a time", s.Namespace, s.Name, lastUpdatedAnnotation, s.Annotations[lastUpdatedAnnotation])
	}
	return nil
}

// certificate is a self-signed ECDSA certificate for a host name.
type certificate struct {
	certPEM, keyPEM []byte
	commonName      string
	serial          *big.Int
	notAfter        time.Time
}

func newCertificate(hostname string, now time.Time) (*certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hostname},
		DNSNames:              []string{hostname},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(90 * 24 * time.Hour), // Let's Encrypt's lifetime
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &certificate{
		certPEM:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		commonName: hostname,
		serial:     serial,
		notAfter:   tmpl.NotAfter,
	}, nil
}

func (c *certificate) String() string {
	return fmt.Sprintf("CN=%s, serial %x, valid until %s", c.commonName, c.serial, c.notAfter.Format(time.DateOnly))
}

// entropy is the Shannon entropy of b's byte distribution in bits per
// byte: close to 8 for ciphertext, about 6 for base64 or PEM text.
func entropy(b []byte) float64 {
	var counts [256]int
	for _, c := range b {
		counts[c]++
	}
	var h float64
	for _, n := range counts {
		if n > 0 {
			p := float64(n) / float64(len(b))
			h -= p * math.Log2(p)
		}
	}
	return h
}

func sizes(data map[string][]byte) string {
	var parts []string
	for _, k := range sortedKeys(data) {
		parts = append(parts, fmt.Sprintf("%s (%d B)", k, len(data[k])))
	}
	return strings.Join(parts, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// wrap breaks s after commas so that no line is much longer than width.
func wrap(s string, width int) string {
	var lines []string
	var line string
	for _, part := range strings.SplitAfter(s, ", ") {
		if len(line)+len(part) > width && line != "" {
			lines = append(lines, strings.TrimRight(line, " "))
			line = ""
		}
		line += part
	}
	return strings.Join(append(lines, line), "\n")
}
