package main

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// logrusJSON is the formatter jsonFormatter stands in for.
var logrusJSON = &logrus.JSONFormatter{TimestampFormat: logTimeFormat}

// checkFormatsAsLogrus: jsonFormatter writes logrus.JSONFormatter's bytes
// for e, and reports whether it took its fast path.
func checkFormatsAsLogrus(t *testing.T, e *logrus.Entry) (fast bool) {
	t.Helper()
	want, wantErr := logrusJSON.Format(e)
	e.Buffer = new(bytes.Buffer)
	e.Buffer.WriteString("left by another line") // a pooled buffer is reset; be sure nothing leaks
	e.Buffer.Reset()
	got, err := newJSONFormatter().Format(e)
	if !bytes.Equal(got, want) || (err == nil) != (wantErr == nil) {
		t.Fatalf("jsonFormatter:\n%s(%v)\nlogrus.JSONFormatter:\n%s(%v)", got, err, want, wantErr)
	}
	_, fast = newJSONFormatter().fast(e)
	return fast
}

func testEntry(msg string, level logrus.Level, fields logrus.Fields) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	e := logrus.NewEntry(l).WithFields(fields)
	e.Message, e.Level = msg, level
	e.Time = time.Date(2026, 12, 3, 13, 4, 5, 678901234, time.FixedZone("", 3600))
	return e
}

// TestJSONFormatterAsLogrus: the lines the daemons write, and the ones the
// fast path must leave to logrus.
func TestJSONFormatterAsLogrus(t *testing.T) {
	type s struct{ A int }
	for _, tt := range []struct {
		name   string
		msg    string
		fields logrus.Fields
		fast   bool
	}{
		{"applied", "applied", logrus.Fields{"role": "follower", "cluster": "cluster-b", "namespace": "team-a", "name": "tls", "version": int64(42), "source": "cluster-a"}, true},
		{"stored", "stored", logrus.Fields{"namespace": "n", "name": "x", "tombstone": false, "version": int64(7)}, true},
		{"no fields", "started", nil, true},
		{"error", "cannot read cursor; retrying", logrus.Fields{logrus.ErrorKey: errors.New("dial tcp: connection refused")}, true},
		{"numbers", "m", logrus.Fields{"int": -3, "int32": int32(5), "uint32": uint32(6), "uint64": uint64(1 << 63), "true": true}, true},
		{"empty strings", "", logrus.Fields{"": ""}, true},
		{"unicode", "zürich ✓", logrus.Fields{"région": "東京"}, true},
		{"message to escape", "a \"quoted\" <tag> & \\ \n", nil, false},
		{"value to escape", "m", logrus.Fields{"k": "line\nbreak"}, false},
		{"error to escape", "m", logrus.Fields{"error": errors.New(`bad "x"`)}, false},
		{"key to escape", "m", logrus.Fields{"a<b": 1}, false},
		{"invalid UTF-8", "m\xff", nil, false},
		{"U+2028", "m\u2028", nil, false},
		{"float", "m", logrus.Fields{"seconds": 1.5}, false},
		{"duration", "m", logrus.Fields{"took": 3 * time.Second}, false},
		{"struct", "m", logrus.Fields{"s": s{1}}, false},
		{"nil", "m", logrus.Fields{"n": nil}, false},
		{"clash with time", "m", logrus.Fields{"time": "x"}, false},
		{"clash with msg", "m", logrus.Fields{"msg": "x"}, false},
		{"clash with level", "m", logrus.Fields{"level": "x"}, false},
		{"prefixed key", "m", logrus.Fields{"fields.level": "x"}, false},
		{"many fields", "m", logrus.Fields{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "h": 8, "i": 9, "j": 10, "k": 11, "l": 12, "m": 13, "n": 14}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, level := range []logrus.Level{logrus.InfoLevel, logrus.WarnLevel, logrus.ErrorLevel, logrus.DebugLevel} {
				if fast := checkFormatsAsLogrus(t, testEntry(tt.msg, level, tt.fields)); fast != tt.fast {
					t.Errorf("level %s: fast path %v; want %v", level, fast, tt.fast)
				}
			}
		})
	}
}

// FuzzJSONFormatter: logrus.JSONFormatter's bytes for any message, key
// and values.
func FuzzJSONFormatter(f *testing.F) {
	f.Add("applied", "namespace", "team-a", int64(42), true, uint8(4))
	f.Add("a <b>", "fields.time", "\u2028", int64(-1), false, uint8(2))
	f.Add("m\xff", "msg", "x\"y", int64(0), true, uint8(0))
	f.Fuzz(func(t *testing.T, msg, key, value string, n int64, flag bool, level uint8) {
		e := testEntry(msg, logrus.Level(level%7), logrus.Fields{
			key: value, key + "2": n, "flag": flag, "err": errors.New(value),
		})
		checkFormatsAsLogrus(t, e)
	})
}

// BenchmarkLogLine: a follower's "applied" line, through jsonFormatter and
// through logrus.JSONFormatter.
func BenchmarkLogLine(b *testing.B) {
	e := testEntry("applied", logrus.InfoLevel, logrus.Fields{
		"role": "follower", "cluster": "cluster-b", "namespace": "r10000-src-042", "name": "cert-004242", "version": int64(4242), "source": "cluster-a",
	})
	for _, bc := range []struct {
		name string
		f    logrus.Formatter
	}{{"fast", newJSONFormatter()}, {"logrus", logrusJSON}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			e.Buffer = new(bytes.Buffer)
			for b.Loop() {
				e.Buffer.Reset()
				if _, err := bc.f.Format(e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
