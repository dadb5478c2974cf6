package main

import (
	"fmt"
	"strings"
	"testing"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// copyEvents returns the follower's Normal events.k8s.io/v1 Events in the
// test namespace, by reason, each as "regarding name: note".
func (e *syncEnv) copyEvents() map[string][]string {
	e.t.Helper()
	list, err := e.follower.Clientset.EventsV1().Events(e.ns).List(e.t.Context(), metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string][]string{}
	for _, ev := range list.Items {
		if ev.Type == "Normal" {
			out[ev.Reason] = append(out[ev.Reason], ev.Regarding.Name+": "+ev.Note)
		}
	}
	return out
}

// TestCopyEvents: the follower records a copy's life as Normal Events
// through events.k8s.io/v1 (reporting controller kube-secret-sync, action
// Apply): created, updated, deleted. A burst of copies gets at most the
// rate limit's burst of them, and the rest are counted as dropped: 150
// Secrets synced at once do not make 150 Events.
func TestCopyEvents(t *testing.T) {
	testenv.SkipShort(t)
	e := newSyncEnv(t)
	_, follower := e.startPair()
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("life", map[string]string{"v": "1"}))
	e.waitSynced("life")
	ev := e.waitNormalEvent("life", "Created")
	if ev.ReportingController != "kube-secret-sync" || ev.Action != "Apply" || ev.Regarding.Kind != "Secret" || !strings.Contains(ev.Note, "written by cluster cluster-a") {
		t.Errorf("Created event = controller %q, action %q, regarding %s, note %q", ev.ReportingController, ev.Action, ev.Regarding.Kind, ev.Note)
	}
	s, err := src.Get(t.Context(), "life", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data["v"] = []byte("2")
	if _, err := src.Update(t.Context(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitNormalEvent("life", "Updated")
	if err := src.Delete(t.Context(), "life", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("life")
	e.waitNormalEvent("life", "Deleted")

	const n = 150
	for i := range n {
		mustCreate(t, src, labelled(fmt.Sprintf("burst-%03d", i), nil))
	}
	follower.waitMetric(t, `kube_secret_sync_rows_applied_total{action="created"}`, n+1)
	dropped := follower.metric(t, "kube_secret_sync_events_dropped_total")
	var created int
	eventually(t, syncTimeout, func() error {
		created = len(e.copyEvents()["Created"]) - 1 // life's
		if got := created + int(dropped); got != n {
			return fmt.Errorf("%d Created events recorded and %v dropped; want %d in all", created, dropped, n)
		}
		return nil
	})
	if dropped == 0 || created > normalEventBurst+10*normalEventQPS {
		t.Errorf("%d Created events for %d copies made at once (%v dropped); want at most about the burst of %d", created, n, dropped, normalEventBurst)
	}
}

// waitNormalEvent waits for a Normal Event with reason on the follower's
// Secret name, and returns it.
func (e *syncEnv) waitNormalEvent(name, reason string) *eventsv1.Event {
	e.t.Helper()
	var found *eventsv1.Event
	eventually(e.t, syncTimeout, func() error {
		list, err := e.follower.Clientset.EventsV1().Events(e.ns).List(e.t.Context(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for i, ev := range list.Items {
			if ev.Type == "Normal" && ev.Reason == reason && ev.Regarding.Name == name {
				found = &list.Items[i]
				return nil
			}
		}
		return fmt.Errorf("no Normal %s event on %s yet", reason, name)
	})
	return found
}
