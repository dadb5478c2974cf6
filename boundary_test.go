package main

import (
	"go/parser"
	"go/token"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// cryptoFiles hold the wire format and its keys. They must stay
// re-implementable from their text alone and reviewable on their own, so
// they import nothing beyond the standard library: no Kubernetes, no
// database, no logging.
var cryptoFiles = []string{"crypto.go", "payloadjson.go", "hash.go"}

// nonStdImports returns the imports of the Go source src that are not in
// the standard library (whose paths have no dot in their first element).
func nonStdImports(filename string, src []byte) ([]string, error) {
	f, err := parser.ParseFile(token.NewFileSet(), filename, src, parser.ImportsOnly)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, imp := range f.Imports {
		path, err := strconv.Unquote(imp.Path.Value)
		if err != nil {
			return nil, err
		}
		first, _, _ := strings.Cut(path, "/")
		if strings.Contains(first, ".") {
			out = append(out, path)
		}
	}
	return out, nil
}

// TestCryptoImportsOnlyTheStandardLibrary is derper's dependency test for
// the crypto boundary: it fails when crypto.go, payloadjson.go or hash.go imports a
// Kubernetes, database or any other non-standard package.
func TestCryptoImportsOnlyTheStandardLibrary(t *testing.T) {
	for _, name := range cryptoFiles {
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		imports, err := nonStdImports(name, src)
		if err != nil {
			t.Fatal(err)
		}
		if len(imports) > 0 {
			t.Errorf("%s imports %q; it must import the standard library only", name, imports)
		}
	}
}

// TestNonStdImports shows that the check above can fail.
func TestNonStdImports(t *testing.T) {
	tests := []struct {
		src  string
		want []string
	}{
		{`package main; import ("crypto/aes"; "encoding/json")`, nil},
		{`package main; import corev1 "k8s.io/api/core/v1"`, []string{"k8s.io/api/core/v1"}},
		{`package main; import ("fmt"; "github.com/jackc/pgx/v5"; _ "golang.org/x/crypto/hkdf")`, []string{"github.com/jackc/pgx/v5", "golang.org/x/crypto/hkdf"}},
		{`package main; import "github.com/kube-secret-sync/kube-secret-sync/migrations"`, []string{"github.com/kube-secret-sync/kube-secret-sync/migrations"}},
	}
	for _, tt := range tests {
		got, err := nonStdImports("x.go", []byte(tt.src))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("nonStdImports(%q) = %q; want %q", tt.src, got, tt.want)
		}
	}
}
