// Package golden compares test output with files under testdata/, and
// rewrites them when a test runs with its -update flag.
package golden

import (
	"os"
	"path/filepath"
	"testing"
)

// Check compares got with testdata/name; with update set it first writes
// got there (review the diff before committing it).
func Check(t testing.TB, name, got string, update bool) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
