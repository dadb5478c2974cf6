package main

import (
	"os"

	"github.com/go-logr/logr"
	"github.com/sirupsen/logrus"
	"k8s.io/klog/v2"
)

// logTimeFormat is RFC 3339 with milliseconds.
const logTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// newLogger configures logrus once: JSON by default, text with PRETTY=1,
// debug level with DEBUG=1. client-go's own messages (leader election,
// watch restarts) are routed through it so that every line has one format.
func newLogger(cfg *Config) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	// Milliseconds, as klog and controller-runtime's zap have: a sync of
	// thousands of Secrets happens within a few seconds.
	if on(cfg.Pretty) {
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: logTimeFormat})
	} else {
		l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: logTimeFormat})
	}
	if on(cfg.Debug) {
		l.SetLevel(logrus.DebugLevel)
	}
	role := "follower"
	if cfg.IsLeader() {
		role = "leader"
	}
	entry := l.WithFields(logrus.Fields{"role": role, "cluster": cfg.ClusterName})
	klog.SetLogger(logr.New(&klogSink{entry: entry.WithField("component", "client-go")}))
	return entry
}

// klogSink is a logr.LogSink writing to logrus. klog's verbosity levels
// above 0 are debug messages.
type klogSink struct {
	entry *logrus.Entry
	name  string
}

func (s *klogSink) Init(logr.RuntimeInfo) {}

func (s *klogSink) Enabled(level int) bool {
	return level == 0 || s.entry.Logger.IsLevelEnabled(logrus.DebugLevel) && level <= 4
}

func (s *klogSink) Info(level int, msg string, kv ...any) {
	e := s.with(kv)
	if level > 0 {
		e.Debug(msg)
		return
	}
	e.Info(msg)
}

func (s *klogSink) Error(err error, msg string, kv ...any) {
	s.with(kv).WithError(err).Error(msg)
}

func (s *klogSink) WithValues(kv ...any) logr.LogSink {
	return &klogSink{entry: s.with(kv), name: s.name}
}

func (s *klogSink) WithName(name string) logr.LogSink {
	if s.name != "" {
		name = s.name + "/" + name
	}
	return &klogSink{entry: s.entry.WithField("logger", name), name: name}
}

func (s *klogSink) with(kv []any) *logrus.Entry {
	if len(kv) == 0 {
		return s.entry
	}
	fields := make(logrus.Fields, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		if k, ok := kv[i].(string); ok {
			fields[k] = kv[i+1]
		}
	}
	return s.entry.WithFields(fields)
}
