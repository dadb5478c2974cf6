package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the daemon's Prometheus metrics, on their own registry so
// that tests can run several daemons in one process.
type metrics struct {
	registry *prometheus.Registry

	rowsWritten   prometheus.Counter
	rowsApplied   *prometheus.CounterVec // by action
	rowErrors     *prometheus.CounterVec // by reason
	conflicts     prometheus.Counter
	reconciles    *prometheus.CounterVec // by kind and result
	reconcileTime *prometheus.HistogramVec
	cursor        prometheus.Gauge
	active        prometheus.Gauge
	lastSuccess   prometheus.Gauge
	deletesHeld   prometheus.Gauge
	writer        prometheus.Gauge
	writerEpoch   prometheus.Gauge
	claimRenewals prometheus.Counter
	foreignRows   prometheus.Gauge
	unverified    prometheus.Gauge
	buildInfo     *prometheus.GaugeVec
	eventsDropped prometheus.Counter
	tick          prometheus.Gauge
	dbVersion     prometheus.Gauge
	// claimLeft has no labels; a vector, so that only a leader, once it
	// has read the claim, exports it.
	claimLeft *prometheus.GaugeVec

	// heartbeat is the Unix time of the last loop iteration, for /healthz.
	heartbeat atomic.Int64
	// ready is set once the database is migrated and the loop started.
	ready atomic.Bool
	// running is set while this replica's sync loop runs (it holds the
	// Lease); a standby has no loop to watch.
	running atomic.Bool
	// held is how many deletes the leader holds back (DELETE_GUARD_PERCENT);
	// /readyz fails while it is not 0.
	held atomic.Int64
}

func newMetrics() *metrics {
	m := &metrics{registry: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.registry.MustRegister(c) }
	m.rowsWritten = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kube_secret_sync_rows_written_total",
		Help: "Rows (Secrets or tombstones) the leader wrote to the database.",
	})
	m.rowsApplied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kube_secret_sync_rows_applied_total",
		Help: "Rows the follower applied, by action (created, updated, recreated, deleted, retained, unchanged).",
	}, []string{"action"})
	m.rowErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kube_secret_sync_row_errors_total",
		Help: "Attempts to sync a row that failed, by reason: follower wrong_key, tampered, invalid, rollback, unmanaged, api; leader invalid (a Secret it cannot seal), credentials (a token Secret it never syncs) and tampered, wrong_key, invalid (a damaged row it rewrites).",
	}, []string{"reason"})
	m.conflicts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kube_secret_sync_unmanaged_conflicts_total",
		Help: "Distinct row versions not applied because a Secret of the same name exists and is not managed by kube-secret-sync.",
	})
	m.reconciles = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kube_secret_sync_reconciles_total",
		Help: "Reconcile passes, by kind (full, incremental) and result (ok, error).",
	}, []string{"kind", "result"})
	m.reconcileTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "kube_secret_sync_reconcile_duration_seconds",
		Help:    "Duration of reconcile passes, by kind.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
	}, []string{"kind"})
	m.cursor = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kube_secret_sync_cursor_version",
		Help: "Follower: the row version applied up to. Leader: the last version written.",
	})
	m.active = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kube_secret_sync_active",
		Help: "1 while this replica holds the Lease and syncs.",
	})
	m.lastSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kube_secret_sync_last_success_timestamp_seconds",
		Help: "Unix time of the last reconcile pass that ended without error.",
	})
	m.deletesHeld = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kube_secret_sync_deletes_held",
		Help: "Leader: deletes (tombstones) held back because there were more than DELETE_GUARD_PERCENT allows; 0 when none.",
	})
	m.writer = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kube_secret_sync_writer",
		Help: "Leader (LEADER=1): 1 while this cluster holds the database's writer claim and writes, 0 while it is on standby and follows the writer's rows.",
	})
	m.writerEpoch = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kube_secret_sync_writer_epoch",
		Help: "Leader: the epoch of the writer claim this cluster holds, or last saw held.",
	})
	m.claimRenewals = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kube_secret_sync_claim_renewals_total",
		Help: "Leader: renewals of the writer claim (the only database write of an idle leader).",
	})
	m.foreignRows = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kube_secret_sync_foreign_rows",
		Help: "Leader: live rows written by another cluster that this writer holds no Secret for (or no copy at the row's version): kept as they are, never deleted.",
	})
	m.unverified = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kube_secret_sync_rows_unverified",
		Help: "Leader: rows this writer answers for whose ciphertext it has not opened since it started (or since their header changed); each full pass opens some.",
	})
	m.buildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kube_secret_sync_build_info",
		Help: "Always 1: the binary's version, the Go version that built it, and the role it runs in (LEADER: leader or follower).",
	}, []string{"version", "goversion", "role"})
	m.eventsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kube_secret_sync_events_dropped_total",
		Help: "Normal Events (a copy created, updated or deleted) not recorded because more came at once than the rate limit allows; the log lines and rows_applied_total still count each.",
	})
	m.tick = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kube_secret_sync_tick_seconds",
		Help: "TICK_SECONDS: the interval of full reconcile passes (the alerting rules' stall threshold is a multiple of it).",
	})
	m.dbVersion = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kube_secret_sync_database_version",
		Help: "The database's version counter, as the last full pass read it (a follower's lag is this minus cursor_version).",
	})
	m.claimLeft = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kube_secret_sync_writer_claim_remaining_seconds",
		Help: "Leader: seconds until the writer claim expires unless renewed, as this cluster last read or renewed it (by the database's clock); 0 or less: no cluster holds it. Not exported by a follower.",
	}, nil)
	for _, c := range []prometheus.Collector{m.rowsWritten, m.rowsApplied, m.rowErrors, m.conflicts, m.reconciles,
		m.reconcileTime, m.cursor, m.active, m.lastSuccess, m.deletesHeld, m.writer, m.writerEpoch, m.claimRenewals, m.foreignRows, m.unverified,
		m.buildInfo, m.eventsDropped, m.tick, m.dbVersion, m.claimLeft,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	m.beat()
	return m
}

// describe exports what cfg and the build say about this daemon.
func (m *metrics) describe(cfg *Config) {
	role := "follower"
	if cfg.IsLeader() {
		role = "leader"
	}
	m.buildInfo.WithLabelValues(version, runtime.Version(), role).Set(1)
	m.tick.Set(cfg.Tick().Seconds())
}

// observe records one reconcile pass.
func (m *metrics) observe(kind string, start time.Time, err error) {
	m.reconcileTime.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	result := "ok"
	if err != nil {
		result = "error"
	} else {
		m.lastSuccess.SetToCurrentTime()
	}
	m.reconciles.WithLabelValues(kind, result).Inc()
	m.beat()
}

func (m *metrics) beat() { m.heartbeat.Store(time.Now().Unix()) }

// holdDeletes records how many deletes the leader holds back.
func (m *metrics) holdDeletes(n int) {
	m.held.Store(int64(n))
	m.deletesHeld.Set(float64(n))
}

// setRunning marks the start and end of this replica's sync loop.
func (m *metrics) setRunning(on bool) {
	m.beat()
	m.running.Store(on)
	if on {
		m.active.Set(1)
	} else {
		m.active.Set(0)
	}
}

// serve runs the metrics and probe endpoints until ctx ends. /healthz fails
// when the running loop has not turned for staleAfter (a stuck process is
// restarted); /readyz succeeds once the daemon has started.
// serve answers on ln until ctx ends. The caller listens first, so that
// an address that cannot be bound stops the process at start instead of
// leaving it running without probes.
func (m *metrics) serve(ctx context.Context, ln net.Listener, staleAfter time.Duration) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if age := time.Since(time.Unix(m.heartbeat.Load(), 0)); m.running.Load() && age > staleAfter {
			http.Error(w, "loop stalled for "+age.Round(time.Second).String(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !m.ready.Load() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		if n := m.held.Load(); n > 0 {
			http.Error(w, fmt.Sprintf("holding %d deletes back: more than DELETE_GUARD_PERCENT allows (see the logs)", n), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return serveUntil(ctx, ln, mux)
}

// servePprof serves Go's runtime profiles (net/http/pprof) on ln until ctx
// ends: opt-in (PPROF_ADDR), on a listener of its own, so that the metrics
// port never exposes them.
func servePprof(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return serveUntil(ctx, ln, mux)
}

// serveUntil serves h on ln until ctx ends.
func serveUntil(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
