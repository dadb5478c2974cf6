package main

// Events through events.k8s.io/v1 (client-go's tools/events), as
// controller-runtime, cert-manager and the kube-scheduler record them today:
// Warnings for what an operator must act on, and Normal events for a copy's
// life, rate-limited so that a sync of 10,000 Secrets does not flood the
// API server with as many Events.

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/flowcontrol"
)

// Normal events: at most normalEventBurst at once, then normalEventQPS per
// second; the rest are counted in events_dropped_total. Warnings are not
// limited here: each is made once per row version or Secret content.
const (
	normalEventQPS   = 2
	normalEventBurst = 50
)

// eventRecorder records Events about Secrets, by reference only: a
// Secret's data never goes near it. A nil eventRecorder records nothing.
type eventRecorder struct {
	rec     events.EventRecorder
	normal  flowcontrol.RateLimiter
	metrics *metrics
}

// startEvents starts the Event broadcaster of client (events.k8s.io/v1,
// or core/v1 Events where the API server has no events.k8s.io/v1) until
// ctx ends; stop flushes it.
func startEvents(ctx context.Context, client kubernetes.Interface, m *metrics) (r *eventRecorder, stop func()) {
	b := events.NewEventBroadcasterAdapterWithContext(ctx, client)
	b.StartRecordingToSink(ctx.Done())
	return newEventRecorder(b.NewRecorder("kube-secret-sync"), m), b.Shutdown
}

func newEventRecorder(rec events.EventRecorder, m *metrics) *eventRecorder {
	return &eventRecorder{rec: rec, normal: flowcontrol.NewTokenBucketRateLimiter(normalEventQPS, normalEventBurst), metrics: m}
}

// warn records a Warning event about the Secret ref; action is what
// kube-secret-sync did or did not do (Sync, Apply).
func (r *eventRecorder) warn(ref *corev1.ObjectReference, reason, action, note string, args ...any) {
	if r == nil {
		return
	}
	r.rec.Eventf(ref, nil, corev1.EventTypeWarning, reason, action, note, args...)
}

// normalf records a Normal event about the Secret ref, unless more than the
// rate limit allows were recorded lately.
func (r *eventRecorder) normalf(ref *corev1.ObjectReference, reason, action, note string, args ...any) {
	if r == nil {
		return
	}
	if !r.normal.TryAccept() {
		r.metrics.eventsDropped.Inc()
		return
	}
	r.rec.Eventf(ref, nil, corev1.EventTypeNormal, reason, action, note, args...)
}
