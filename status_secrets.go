package main

// status's view of the Secrets: each row this cluster applies, by state
// (in sync, pending, rejected by reason, unmanaged, retained), and with
// --diff what the follower would create, update or delete now. It reads
// the rows' headers, this cluster's copies (kept without their data, as
// the daemon's cache keeps them), and the ciphertexts of only the rows out
// of sync, which it opens to tell a pending row from a rejected one. It
// writes nothing.

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// statusOpenMax bounds how many rows out of sync status opens (and reads
// the ciphertexts of); the rest are counted as not examined.
const statusOpenMax = 5000

// statusListMax bounds the Secrets that need attention listed one by one.
const statusListMax = 20

// secretCounts are the rows this cluster applies, by state.
type secretCounts struct {
	InSync  int `json:"inSync"`
	Pending int `json:"pending"`
	// Rejected is by reason: tampered, wrong_key, invalid, rollback.
	Rejected  map[string]int `json:"rejected"`
	Unmanaged int            `json:"unmanaged"`
	Retained  int            `json:"retained"`
	// NotExamined are rows out of sync beyond statusOpenMax.
	NotExamined int `json:"notExamined,omitempty"`
}

func (c *secretCounts) String() string {
	rejected := 0
	var reasons []string
	for _, reason := range slices.Sorted(maps.Keys(c.Rejected)) {
		rejected += c.Rejected[reason]
		reasons = append(reasons, fmt.Sprintf("%s %d", reason, c.Rejected[reason]))
	}
	s := fmt.Sprintf("%d in sync, %d pending, %d rejected", c.InSync, c.Pending, rejected)
	if len(reasons) > 0 {
		s += " (" + strings.Join(reasons, ", ") + ")"
	}
	s += fmt.Sprintf(", %d unmanaged, %d retained", c.Unmanaged, c.Retained)
	if c.NotExamined > 0 {
		s += fmt.Sprintf(", %d more out of sync not examined", c.NotExamined)
	}
	return s
}

// diffEntry is one change status --diff lists: create, update or delete.
type diffEntry struct {
	Action    string `json:"action"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Version   int64  `json:"version"`
}

// whatToDo says, for each reason a row is not applied, what the operator
// does about it (the README's troubleshooting table).
var whatToDo = map[string]string{
	"tampered":  "the row was changed in the database behind the leader's back; the leader rewrites it within a few full passes: find out who can write there",
	"wrong_key": "the row is under a key this cluster does not have: give every cluster the same ENCRYPTION_KEY, and during a rotation the old one in PREVIOUS_ENCRYPTION_KEYS",
	"invalid":   "the row is in a format this build cannot read (a newer version wrote it?) or too large: upgrade this cluster",
	"rollback":  "the row is older than the copy (a database restored from a backup?): see the README, \"After restoring the database from a backup\"",
	"unmanaged": "a Secret of that name exists here without the kube-secret-sync.io/managed=true label: delete it, or add the label to hand it over",
}

// readSecrets fills r.Secrets, and with diff r.Diff, for a follower (or a
// standby leader, which applies the writer's rows but not its own).
func (r *statusReport) readSecrets(ctx context.Context, cfg *Config, store *Store, client kubernetes.Interface, diff bool) error {
	keys, err := cfg.keyring()
	if err != nil {
		return err
	}
	if cfg, err = cfg.withNamespaceWatch(ctx, client); err != nil {
		return err
	}
	standby := cfg.IsLeader()
	copies, err := startSecretCache(ctx, client, cfg, copiesSelector(cfg, standby), nil, keys, keys.IDs())
	if err != nil {
		return err
	}
	idx, err := loadIndex(ctx, store)
	if err != nil {
		return err
	}
	c := &secretCounts{Rejected: map[string]int{}}
	var todo []*Row
	for k, st := range idx.rows {
		row := headerRow(k, &st)
		if !cfg.namespaceAllowed(k.Namespace) || standby && row.SourceCluster == cfg.ClusterName {
			continue
		}
		copy := copies.get(k)
		switch {
		case inSync(&row, copy):
			c.InSync++
		case row.Tombstone && cfg.DeletePolicy == deletePolicyRetain:
			c.Retained++
		default:
			todo = append(todo, &row)
		}
	}
	slices.SortFunc(todo, func(a, b *Row) int { return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	if len(todo) > statusOpenMax {
		c.NotExamined, todo = len(todo)-statusOpenMax, todo[:statusOpenMax]
	}
	var small []*Row // the rows a daemon would transfer (see openRow)
	for _, row := range todo {
		if row.Size <= MaxCiphertextSize {
			small = append(small, row)
		}
	}
	if err := store.FillCiphertexts(ctx, small); err != nil {
		return err
	}
	listed := 0
	problem := func(row *Row, reason string) {
		if reason == "unmanaged" {
			c.Unmanaged++
		} else {
			c.Rejected[reason]++
		}
		if listed++; listed <= statusListMax {
			r.Attention = append(r.Attention, fmt.Sprintf("%s/%s (row version %d) is not applied, %s: %s", row.Namespace, row.Name, row.Version, reason, whatToDo[reason]))
		}
	}
	for _, row := range todo {
		p, err := openRow(keys, row)
		if err != nil {
			problem(row, rejectReason(err))
			continue
		}
		copy := copies.get(row.ObjectKey)
		action := ""
		switch {
		case p.Deleted:
			action = "delete"
		case copy != nil && copy.version > row.Version:
			problem(row, "rollback")
			continue
		case copy != nil:
			action = "update"
		default:
			// Not among the managed copies: a Secret of that name that is
			// not managed is a conflict (only its labels are looked at).
			s, err := client.CoreV1().Secrets(row.Namespace).Get(ctx, row.Name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				action = "create"
			case err != nil:
				return fmt.Errorf("read Secret %s/%s: %w", row.Namespace, row.Name, err)
			case !isManaged(s) && !standby:
				problem(row, "unmanaged")
				continue
			default:
				action = "update"
			}
		}
		c.Pending++
		if diff {
			r.Diff = append(r.Diff, diffEntry{action, row.Namespace, row.Name, row.Version})
		}
	}
	if listed > statusListMax {
		r.Attention = append(r.Attention, fmt.Sprintf("and %d more Secrets not applied (kube_secret_sync_row_errors_total, the daemon's logs)", listed-statusListMax))
	}
	r.Secrets, r.diffed = c, diff
	return nil
}
