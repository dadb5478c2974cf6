package main

// The status subcommand: what an operator asks first, answered from the
// daemon's own environment (`kubectl exec deploy/kube-secret-sync --
// /kube-secret-sync status`). It reads and never writes: the Lease, the
// database's writer claim and version, and this cluster's cursor.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Exit codes of the status subcommand.
const (
	statusOK          = 0 // nothing needs attention
	statusAttention   = 1 // something needs attention (listed)
	statusUsage       = 2 // invalid arguments or configuration
	statusUnreachable = 3 // the database or the API server cannot be read
)

// statusReport is what status prints (-o json: these fields).
type statusReport struct {
	Cluster string `json:"cluster"`
	// Role is "leader (writer)", "leader (standby)" or "follower".
	Role   string        `json:"role"`
	Lease  *leaseStatus  `json:"lease"`
	Writer *writerStatus `json:"writer"`
	// DatabaseVersion is the version of the newest row.
	DatabaseVersion int64 `json:"databaseVersion"`
	// Cursor is how far this cluster has applied the rows: for a
	// follower or a standby leader, nil for the writer.
	Cursor *cursorStatus `json:"cursor,omitempty"`
	// Secrets counts this cluster's copies by state, for a follower or a
	// standby leader (nil for the writer).
	Secrets *secretCounts `json:"secrets,omitempty"`
	// Diff is what this cluster would create, update or delete now
	// (status --diff).
	Diff   []diffEntry `json:"diff,omitempty"`
	diffed bool        // --diff asked for Diff
	// Attention lists what an operator should look at, with what to do.
	Attention []string `json:"attention"`
}

type leaseStatus struct {
	Name     string    `json:"name"`
	Holder   string    `json:"holder"`
	Renewed  time.Time `json:"renewed"`
	Duration float64   `json:"durationSeconds"`
}

type writerStatus struct {
	Holder string `json:"holder"`
	Epoch  int64  `json:"epoch"`
	// ExpiresIn is the claim's time left by the database's clock;
	// negative once it has expired.
	ExpiresIn float64 `json:"expiresInSeconds"`
}

type cursorStatus struct {
	Version int64 `json:"version"`
	// RowsBehind is how many rows changed after the cursor, and
	// OldestBehind how long ago the oldest of them did (seconds).
	RowsBehind   int64   `json:"rowsBehind"`
	OldestBehind float64 `json:"oldestBehindSeconds"`
}

// runStatus is the status subcommand; it returns the exit code.
func runStatus(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("status", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	var output string
	flags.StringVar(&output, "o", "", "output format: json")
	flags.StringVar(&output, "output", "", "output format: json")
	diff := flags.Bool("diff", false, "list what this cluster would create, update or delete now")
	if err := flags.Parse(args); err != nil || flags.NArg() > 0 || (output != "" && output != "json") {
		fmt.Fprintf(stderr, "kube-secret-sync: status: unknown arguments %q (want [--diff] [-o json])\n", strings.Join(args, " "))
		return statusUsage
	}
	asJSON := output == "json"
	cfg, err := loadConfig()
	if err != nil {
		fmt.Fprintln(stderr, "kube-secret-sync: "+err.Error())
		return statusUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc, err := restConfig(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "kube-secret-sync: status: "+err.Error())
		return statusUnreachable
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		fmt.Fprintln(stderr, "kube-secret-sync: status: "+err.Error())
		return statusUnreachable
	}
	store, err := OpenStore(ctx, cfg.DSN)
	if err != nil {
		fmt.Fprintln(stderr, "kube-secret-sync: status: "+dsnError)
		return statusUnreachable
	}
	defer store.Close()
	r, err := readStatus(ctx, cfg, store, client, time.Now())
	if err == nil && r.Cursor != nil {
		err = r.readSecrets(ctx, cfg, store, client, *diff)
	}
	if err != nil {
		fmt.Fprintln(stderr, "kube-secret-sync: status: "+err.Error())
		return statusUnreachable
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r)
	} else {
		r.print(stdout)
	}
	if len(r.Attention) > 0 {
		return statusAttention
	}
	return statusOK
}

// readStatus gathers the report; now is the local clock, for the Lease
// (the API server's objects carry its clock, close enough for seconds).
func readStatus(ctx context.Context, cfg *Config, store *Store, client kubernetes.Interface, now time.Time) (*statusReport, error) {
	r := &statusReport{Cluster: cfg.ClusterName, Attention: []string{}}
	attention := func(format string, args ...any) { r.Attention = append(r.Attention, fmt.Sprintf(format, args...)) }

	if cfg.LeaderElection {
		lease, err := client.CoordinationV1().Leases(cfg.PodNamespace).Get(ctx, cfg.LeaseName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			attention("no Lease %s/%s: no replica of this cluster has started syncing (is the Deployment running?)", cfg.PodNamespace, cfg.LeaseName)
		case err != nil:
			return nil, fmt.Errorf("read the Lease %s/%s: %w", cfg.PodNamespace, cfg.LeaseName, err)
		default:
			l := &leaseStatus{Name: cfg.PodNamespace + "/" + cfg.LeaseName}
			if h := lease.Spec.HolderIdentity; h != nil {
				l.Holder = *h
			}
			if t := lease.Spec.RenewTime; t != nil {
				l.Renewed = t.UTC()
			}
			if d := lease.Spec.LeaseDurationSeconds; d != nil {
				l.Duration = float64(*d)
			}
			r.Lease = l
			if l.Holder == "" || now.Sub(l.Renewed).Seconds() > l.Duration {
				attention("no replica of this cluster holds the Lease %s: nothing syncs here (are the pods running? see their logs)", l.Name)
			}
		}
	}

	claim, err := store.ReadClaim(ctx)
	if err != nil {
		return nil, err
	}
	r.Writer = &writerStatus{Holder: claim.Holder, Epoch: claim.Epoch, ExpiresIn: claim.ExpiresAt.Sub(claim.Now).Seconds()}
	if claim.Free() {
		attention("no leader holds the writer claim: no cluster's changes reach the database (is a leader running? see its logs)")
	}
	writing := cfg.IsLeader() && claim.Holder == cfg.ClusterName && !claim.Free()
	switch {
	case writing:
		r.Role = "leader (writer)"
	case cfg.IsLeader():
		r.Role = "leader (standby)"
	default:
		r.Role = "follower"
	}

	// The writer has no cursor; for it, Lag after 0 gives the version.
	var cursor Cursor
	if !writing {
		cursor, err = (&cursorStore{client: client, namespace: cfg.PodNamespace, name: cfg.LeaseName + stateSuffix}).load(ctx)
		if err != nil && !errors.Is(err, errBadCursor) {
			return nil, fmt.Errorf("read this cluster's cursor: %w", err)
		}
	}
	lag, err := store.Lag(ctx, cursor.Version)
	if err != nil {
		return nil, err
	}
	r.DatabaseVersion = lag.MaxVersion
	if writing {
		return r, nil
	}
	r.Cursor = &cursorStatus{Version: cursor.Version, RowsBehind: lag.Rows}
	if lag.Rows > 0 {
		r.Cursor.OldestBehind = lag.Oldest.Seconds()
	}
	// Rows wait for the next pull (POLL_SECONDS) or, failed, for the next
	// full pass (TICK_SECONDS): behind by more than a few of those is not
	// the sync's normal pace.
	if bound := 3*cfg.Tick() + time.Minute; lag.Rows > 0 && lag.Oldest > bound {
		attention("this cluster is %d rows behind the database, the oldest changed %v ago (more than %v): see the daemon's logs and row_errors_total", lag.Rows, lag.Oldest.Round(time.Second), bound)
	}
	return r, nil
}

// print writes the report for a terminal.
func (r *statusReport) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "cluster:\t%s\n", r.Cluster)
	fmt.Fprintf(tw, "role:\t%s\n", r.Role)
	if l := r.Lease; l != nil {
		holder := l.Holder
		if holder == "" {
			holder = "nobody"
		}
		fmt.Fprintf(tw, "lease:\t%s held by %s, renewed %s\n", l.Name, holder, l.Renewed.Format(time.RFC3339))
	}
	if c := r.Writer; c.Holder != "" {
		state := fmt.Sprintf("expires in %.0fs", c.ExpiresIn)
		if c.ExpiresIn <= 0 {
			state = fmt.Sprintf("expired %.0fs ago", -c.ExpiresIn)
		}
		fmt.Fprintf(tw, "writer claim:\t%s, epoch %d, %s\n", c.Holder, c.Epoch, state)
	} else {
		fmt.Fprintf(tw, "writer claim:\tfree (epoch %d)\n", c.Epoch)
	}
	fmt.Fprintf(tw, "database version:\t%d\n", r.DatabaseVersion)
	if c := r.Cursor; c != nil {
		behind := "in step"
		if c.RowsBehind > 0 {
			behind = fmt.Sprintf("%d rows behind, the oldest changed %.0fs ago", c.RowsBehind, c.OldestBehind)
		}
		fmt.Fprintf(tw, "cursor:\t%d (%s)\n", c.Version, behind)
	}
	if c := r.Secrets; c != nil {
		fmt.Fprintf(tw, "secrets:\t%s\n", c)
	}
	_ = tw.Flush()
	if r.diffed && len(r.Diff) == 0 {
		fmt.Fprintln(w, "would change no Secret")
	} else if r.diffed {
		fmt.Fprintf(w, "would change %d Secrets:\n", len(r.Diff))
		for _, d := range r.Diff {
			fmt.Fprintf(w, "  %s %s/%s (row version %d)\n", d.Action, d.Namespace, d.Name, d.Version)
		}
	}
	if len(r.Attention) == 0 {
		fmt.Fprintln(w, "nothing needs attention")
		return
	}
	fmt.Fprintln(w, "needs attention:")
	for _, a := range r.Attention {
		fmt.Fprintln(w, "  - "+a)
	}
}
