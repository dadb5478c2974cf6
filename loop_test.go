package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// TestPassRunner: every pass is bounded, timed and counted, and a failed
// pass is logged exactly once, by the runner, unless it failed because
// the daemon is shutting down.
func TestPassRunner(t *testing.T) {
	errDB := errors.New("read row states: connection refused")
	tests := []struct {
		name     string
		shutdown bool // the parent context ends during the pass
		idle     bool
		err      error
		// what the runner must do
		errorLogs  int
		ok, failed float64
	}{
		{name: "work done", ok: 1},
		{name: "nothing to do", idle: true},
		{name: "failed", err: errDB, errorLogs: 1, failed: 1},
		{name: "failed while idle is still a failure", idle: true, err: errDB, errorLogs: 1, failed: 1},
		{name: "abandoned by a shutdown", shutdown: true, err: context.Canceled},
		{name: "database error during a shutdown", shutdown: true, err: errDB},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, hook := logtest.NewNullLogger()
			logger.SetLevel(logrus.DebugLevel)
			m := newMetrics()
			m.heartbeat.Store(0)
			p := passRunner{log: logrus.NewEntry(logger), metrics: m, timeout: time.Minute}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var deadline time.Time
			err := p.run(ctx, "full", func(ctx context.Context) (bool, error) {
				deadline, _ = ctx.Deadline()
				if tt.shutdown {
					cancel()
				}
				return tt.idle, tt.err
			})
			if !errors.Is(err, tt.err) {
				t.Errorf("run() = %v; want the pass's error %v", err, tt.err)
			}
			if left := time.Until(deadline); left <= 0 || left > time.Minute {
				t.Errorf("pass deadline in %v; want within the 1m timeout", left)
			}
			var errorLogs int
			for _, e := range hook.AllEntries() {
				if e.Level <= logrus.WarnLevel {
					errorLogs++
					if e.Data["kind"] != "full" || e.Data[logrus.ErrorKey] == nil {
						t.Errorf("failure logged without its kind and error: %v", e.Data)
					}
				}
			}
			if errorLogs != tt.errorLogs {
				t.Errorf("%d warning or error lines; want %d", errorLogs, tt.errorLogs)
			}
			if got := testutil.ToFloat64(m.reconciles.WithLabelValues("full", "ok")); got != tt.ok {
				t.Errorf("reconciles{result=ok} = %v; want %v", got, tt.ok)
			}
			if got := testutil.ToFloat64(m.reconciles.WithLabelValues("full", "error")); got != tt.failed {
				t.Errorf("reconciles{result=error} = %v; want %v", got, tt.failed)
			}
			if got := testutil.ToFloat64(m.lastSuccess) > 0; got != (tt.ok > 0) {
				t.Errorf("last success set = %v; want %v", got, tt.ok > 0)
			}
			if alive := m.heartbeat.Load() > 0; alive != !tt.shutdown {
				t.Errorf("heartbeat moved = %v; want %v", alive, !tt.shutdown)
			}
		})
	}
}
