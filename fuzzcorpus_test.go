package main

// The committed seed corpora of the fuzz targets. The files under
// testdata/fuzz/<Target>/ are what a plain `go test` runs through each
// target, and where `go test -fuzz` starts from (`make fuzz`).
//
// The files named seed-* are generated from the code below rather than
// written by hand: many seeds are rows sealed under the test key, which
// nobody can type. TestFuzzSeedCorpora fails when a committed seed differs
// from what the code generates (after a change to the wire format, a "valid
// row" seed that no longer opens would otherwise turn silently into noise).
// Regenerate them with
//
//	go test -run '^TestFuzzSeedCorpora$' -update-fuzz-corpus .
//
// Inputs that a fuzzing run finds failing are written by the go command
// next to them, named by their hash; once fixed, commit them as regression
// seeds. This test leaves them alone.

import (
	"bytes"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var updateFuzzCorpus = flag.Bool("update-fuzz-corpus", false, "rewrite the generated seed-* files under testdata/fuzz")

// fuzzSeed is one input of a fuzz target: the arguments of its fuzz
// function after the *testing.T, in order.
type fuzzSeed struct {
	name string // file name without the seed- prefix
	args []any
}

// fuzzSeedCorpora lists the generated seeds of every fuzz target. A new
// target adds its generator here.
func fuzzSeedCorpora(tb testing.TB) map[string][]fuzzSeed {
	return map[string][]fuzzSeed{
		"FuzzOpen":       openSeedArgs(fuzzOpenSeeds(tb)),
		"FuzzSealOpen":   fuzzSealOpenSeeds(),
		"FuzzLoadConfig": fuzzLoadConfigSeeds(),
	}
}

// marshalFuzzSeed encodes args in the go command's corpus file format
// ("go test fuzz v1", then one Go-syntax value per line).
func marshalFuzzSeed(tb testing.TB, args []any) []byte {
	tb.Helper()
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		switch v := a.(type) {
		case string:
			fmt.Fprintf(&b, "string(%q)\n", v)
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case int64, bool:
			fmt.Fprintf(&b, "%T(%v)\n", v, v)
		default:
			tb.Fatalf("marshalFuzzSeed: unsupported type %T", a)
		}
	}
	return b.Bytes()
}

// TestFuzzSeedCorpora checks that testdata/fuzz holds exactly the generated
// seeds (besides regression inputs the go command wrote).
func TestFuzzSeedCorpora(t *testing.T) {
	for target, seeds := range fuzzSeedCorpora(t) {
		dir := filepath.Join("testdata", "fuzz", target)
		want := map[string][]byte{}
		for _, s := range seeds {
			name := "seed-" + s.name
			if _, dup := want[name]; dup {
				t.Fatalf("%s: two seeds named %s", target, name)
			}
			want[name] = marshalFuzzSeed(t, s.args)
		}
		if *updateFuzzCorpus {
			writeFuzzSeeds(t, dir, want)
			continue
		}
		stale, _ := filepath.Glob(filepath.Join(dir, "seed-*"))
		for _, path := range stale {
			if _, ok := want[filepath.Base(path)]; !ok {
				t.Errorf("%s is no longer generated; run go test -run '^TestFuzzSeedCorpora$' -update-fuzz-corpus .", path)
			}
		}
		for _, name := range slices.Sorted(maps.Keys(want)) {
			path := filepath.Join(dir, name)
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, want[name]) {
				t.Errorf("%s is missing or out of date (%v); run go test -run '^TestFuzzSeedCorpora$' -update-fuzz-corpus .", path, err)
			}
		}
	}
}

func writeFuzzSeeds(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(dir, "seed-*"))
	for _, path := range old {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote %d seeds to %s", len(files), dir)
}

// shiftAlnum maps every ASCII letter and digit to the next one of its class
// (z to a, 9 to 0) and leaves every other byte alone. The result has the
// same length, the same ASCII-ness and the same punctuation (commas, '@',
// ':'), so a configuration keeps its shape while its secret text changes;
// text of an error message that follows the change came from the secret.
func shiftAlnum(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z':
			b[i] = 'a' + (c-'a'+1)%26
		case c >= 'A' && c <= 'Z':
			b[i] = 'A' + (c-'A'+1)%26
		case c >= '0' && c <= '9':
			b[i] = '0' + (c-'0'+1)%10
		}
	}
	return string(b)
}

// hasControl reports whether s holds an ASCII control character: a message
// with one could forge log lines or terminal output.
func hasControl(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0
}
