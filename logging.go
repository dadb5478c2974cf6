package main

import (
	"bytes"
	"os"
	"slices"
	"strconv"
	"strings"

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
		l.SetFormatter(newJSONFormatter())
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

// jsonFormatter writes the bytes that logrus.JSONFormatter writes, without
// its map and reflection for the lines made of plain fields: a string that
// JSON writes unescaped, a bool, an integer or an error with such a message.
// Every other line it hands to logrus.JSONFormatter. Both daemons log a
// line per Secret they store or apply, and logrus's formatter was 7% of
// the leader's CPU in an initial sync (BenchmarkLogLine: 0.1 of its cost).
// One difference: a field whose value is a func, which logrus leaves out
// with a note in "logrus_error" that a formatter cannot see, is left out
// without the note. None of ours is one.
type jsonFormatter struct {
	slow logrus.JSONFormatter
}

func newJSONFormatter() *jsonFormatter {
	return &jsonFormatter{slow: logrus.JSONFormatter{TimestampFormat: logTimeFormat}}
}

// maxFastFields bounds the fields of a line written on the fast path: its
// keys are sorted in an array on the stack.
const maxFastFields = 16

func (f *jsonFormatter) Format(e *logrus.Entry) ([]byte, error) {
	if out, ok := f.fast(e); ok {
		return out, nil
	}
	return f.slow.Format(e)
}

// fast formats e, or reports false for a line that needs the slow path.
func (f *jsonFormatter) fast(e *logrus.Entry) ([]byte, bool) {
	if e.Caller != nil || len(e.Data) > maxFastFields-3 {
		return nil, false
	}
	var array [maxFastFields]string
	keys := array[:0]
	for k := range e.Data {
		switch {
		case k == logrus.FieldKeyTime, k == logrus.FieldKeyMsg, k == logrus.FieldKeyLevel,
			k == logrus.FieldKeyLogrusError, strings.HasPrefix(k, "fields."):
			return nil, false // logrus renames these (prefixFieldClashes)
		}
		keys = append(keys, k)
	}
	keys = append(keys, logrus.FieldKeyLevel, logrus.FieldKeyMsg, logrus.FieldKeyTime)
	slices.Sort(keys)
	b := e.Buffer
	if b == nil {
		b = new(bytes.Buffer)
	}
	// Nothing is written to b until the line is whole.
	start := b.Len()
	out := append(b.AvailableBuffer(), '{')
	for i, k := range keys {
		if i > 0 {
			out = append(out, ',')
		}
		var ok bool
		if out, ok = appendPlainString(out, k); !ok {
			return nil, false
		}
		out = append(out, ':')
		switch k {
		case logrus.FieldKeyLevel:
			out, ok = appendPlainString(out, e.Level.String())
		case logrus.FieldKeyMsg:
			out, ok = appendPlainString(out, e.Message)
		case logrus.FieldKeyTime:
			out = append(out, '"')
			out = e.Time.AppendFormat(out, logTimeFormat)
			out = append(out, '"')
			ok = true
		default:
			out, ok = appendPlainValue(out, e.Data[k])
		}
		if !ok {
			return nil, false
		}
	}
	out = append(out, "}\n"...)
	b.Write(out)
	return b.Bytes()[start:], true
}

// appendPlainValue appends v as encoding/json writes it in a logrus line,
// or reports false for a value it leaves to the slow path.
func appendPlainValue(b []byte, v any) ([]byte, bool) {
	switch v := v.(type) {
	case error:
		return appendPlainString(b, v.Error())
	case string:
		return appendPlainString(b, v)
	case bool:
		return strconv.AppendBool(b, v), true
	case int:
		return strconv.AppendInt(b, int64(v), 10), true
	case int32:
		return strconv.AppendInt(b, int64(v), 10), true
	case int64:
		return strconv.AppendInt(b, v, 10), true
	case uint32:
		return strconv.AppendUint(b, uint64(v), 10), true
	case uint64:
		return strconv.AppendUint(b, v, 10), true
	}
	return b, false
}
