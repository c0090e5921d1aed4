package store

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/lab-ops/natmap/nat"
)

func sample(t *testing.T) nat.State {
	t.Helper()
	ports, err := nat.ParsePorts("25,465,2222:22")
	if err != nil {
		t.Fatal(err)
	}
	return nat.State{IPForward: true, Dnats: []nat.DNAT{{
		ExtIP: netip.MustParseAddr("203.0.113.43"), IntIP: netip.MustParseAddr("10.0.0.101"),
		Ports: ports, Proto: nat.ProtoTCP, ExtIf: "vmbr0",
	}}}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	f := &File{Path: filepath.Join(t.TempDir(), "sub", "state.json")}
	if st, err := f.Load(); err != nil || len(st.Dnats) != 0 {
		t.Fatalf("missing file: %+v %v", st, err)
	}
	want := sample(t)
	if err := f.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := f.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Dnats) != 1 || got.Dnats[0].String() != want.Dnats[0].String() || !got.IPForward {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	fi, err := os.Stat(f.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}

// A crash between writing the temporary file and renaming it leaves the old
// state file whole, and the leftover does not disturb later saves.
func TestCrashBeforeRenameKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	f := &File{Path: filepath.Join(dir, "state.json")}
	if err := f.Save(sample(t)); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(f.Path)
	crash := errors.New("killed before rename")
	f.rename = func(string, string) error { return crash }
	if err := f.Save(nat.State{}); !errors.Is(err, crash) {
		t.Fatalf("save: %v", err)
	}
	now, _ := os.ReadFile(f.Path)
	if string(now) != string(old) {
		t.Fatalf("state file changed:\n%s", now)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	// A real crash leaves the temp file; the next load ignores it.
	if err := os.WriteFile(filepath.Join(dir, ".state.json.tmp-123"), []byte("{half"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.rename = nil
	if st, err := f.Load(); err != nil || len(st.Dnats) != 1 {
		t.Fatalf("load after crash: %+v %v", st, err)
	}
}

func TestLoadRefusesBadFiles(t *testing.T) {
	tests := []struct{ name, content, want string }{
		{"empty", "", "the file is empty"},
		{"not JSON", "natmap", "not valid JSON"},
		{"truncated", `{"version": 1, "dnats": [{"ext_ip": "203.0`, "not valid JSON"},
		{"no version", `{"rules": []}`, `no "version" key`},
		{"more after the state", `{"version": 1} {"version": 1}`, "not valid JSON"},
		{"wrong key and no version", `{"mystery": 1}`, `no "version" key`},
		{"earlier format, bad rule", `{"dnats": [{"ext_ip": "203.0.113.1", "int_ip": "10.0.0.1", "ports": "0", "proto": "tcp", "ext_if": null}]}`, "earlier natmap's format"},
		{"future version", `{"version": 9, "dnats": []}`, "format version 9 is not supported"},
		{"unknown field", `{"version": 1, "dnats": [], "mystery": true}`, `unknown field "mystery"`},
		{"bad address", `{"version": 1, "dnats": [{"ext_ip": "nope", "int_ip": "10.0.0.1", "ports": "25", "proto": "tcp"}]}`, "not a natmap state"},
		{"bad ports", `{"version": 1, "dnats": [{"ext_ip": "203.0.113.1", "int_ip": "10.0.0.1", "ports": "0", "proto": "tcp"}]}`, "port 0 is out of range"},
		{"conflict", `{"version": 1, "dnats": [{"ext_ip": "203.0.113.1", "int_ip": "10.0.0.1", "ports": "25", "proto": "tcp"}, {"ext_ip": "203.0.113.1", "int_ip": "10.0.0.2", "ports": "25", "proto": "tcp"}]}`, "is also forwarded to 10.0.0.1:25"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := (&File{Path: path}).Load()
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("load: %v, want an error naming %s and saying %q", err, path, tt.want)
			}
			if b, _ := os.ReadFile(path); string(b) != tt.content {
				t.Fatal("the file changed")
			}
		})
	}
}

func TestLockIsExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	l, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Lock(path); err == nil || !strings.Contains(err.Error(), "another natmap daemon") {
		t.Fatalf("second lock: %v", err)
	}
	l.Close()
	l2, err := Lock(path)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.Close()
}

// FuzzDecode: no state file content panics the decoder.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"version":1,"dnats":[{"ext_ip":"203.0.113.1","int_ip":"10.0.0.1","ports":"25","proto":"tcp"}]}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := Decode(b)
		if err != nil {
			return
		}
		if err := st.Validate(); err != nil {
			t.Fatalf("decoded an invalid state: %v", err)
		}
	})
}

func TestMigrateEarlierFormat(t *testing.T) {
	earlier := `{
  "mapping": {"web": [{"id": 3, "request": {"host_addr": "0.0.0.0:8080", "container_addr": "172.17.0.2:80", "proto": "tcp"},
                       "container_id": "abc123", "container_name": "web", "rule_comment": "natmap:web:8080"}],
              "local": [{"id": 4, "request": {"host_addr": "0.0.0.0:8081", "container_addr": "127.0.0.1:80", "proto": "tcp"},
                       "container_id": "", "container_name": "local", "rule_comment": "natmap:local:8081"}]},
  "dnats": [{"ext_ip": "203.0.113.43", "int_ip": "10.0.0.101", "ports": "25", "proto": "tcp", "ext_if": null, "preserve_src_ip": false},
            {"ext_ip": "203.0.113.43", "int_ip": "10.0.0.101", "ports": "465", "proto": "tcp", "ext_if": null, "preserve_src_ip": false},
            {"ext_ip": "203.0.113.43", "int_ip": "10.0.0.101", "ports": "25", "proto": "tcp", "ext_if": null, "preserve_src_ip": false}],
  "snats": [{"int_ip": "10.0.0.101", "ext_ip": "203.0.113.43", "ext_if": "vmbr0"}],
  "hairpins": [{"ext_ip": "203.0.113.43", "int_ip": "10.0.0.101", "ports": "25,465", "proto": "tcp", "lan_cidr": null}],
  "policy_routes": [{"src_ip": "10.0.0.101", "via": "10.0.0.1", "table": 100}]
}`
	f := &File{Path: filepath.Join(t.TempDir(), "state.json")}
	if err := os.WriteFile(f.Path, []byte(earlier), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := f.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !f.Migrated() || len(st.Dnats) != 1 || st.Dnats[0].Ports.String() != "25,465" || len(st.Snats) != 1 ||
		len(st.Hairpins) != 1 || len(st.PolicyRoutes) != 1 || len(st.Mappings) != 2 || st.NextMappingID != 5 {
		t.Fatalf("migrated: %+v", st)
	}
	for _, m := range st.Mappings {
		if m.ID == 4 && (!m.Local() || m.TargetIP.String() != "127.0.0.1") {
			t.Errorf("local service: %+v", m)
		}
		if m.ID == 3 && (m.Local() || m.ContainerIP.String() != "172.17.0.2" || m.ContainerID != "abc123") {
			t.Errorf("container mapping: %+v", m)
		}
	}
	// Nothing is written until the daemon started.
	if b, _ := os.ReadFile(f.Path); string(b) != earlier {
		t.Fatal("Load changed the file")
	}
	if err := f.FinishMigration(st); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f.BackupPath()); string(b) != earlier {
		t.Errorf("backup: %s", b)
	}
	again, err := (&File{Path: f.Path}).Load()
	if err != nil || len(again.Dnats) != 1 {
		t.Fatalf("reloading the rewritten file: %+v %v", again, err)
	}
	if b, _ := os.ReadFile(f.Path); !strings.Contains(string(b), `"version": 1`) {
		t.Errorf("rewritten file:\n%s", b)
	}
}

func TestLoadFaults(t *testing.T) {
	dir := t.TempDir()
	// A directory in the file's place.
	path := filepath.Join(dir, "state.json")
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := (&File{Path: path}).Load(); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("directory: %v", err)
	}
	// Missing keys: a version alone is an empty state; a rule missing a
	// key is refused naming it.
	for content, want := range map[string]string{
		`{"version": 1}`: "",
		`{"version": 1, "dnats": [{"ext_ip": "203.0.113.1", "int_ip": "10.0.0.1", "proto": "tcp"}]}`: "ports: the list is empty",
		`{"version": 1, "snats": [{"int_ip": "10.0.0.1/32", "ext_ip": "203.0.113.1"}]}`:              "ext_if: missing",
	} {
		p := filepath.Join(t.TempDir(), "state.json")
		os.WriteFile(p, []byte(content), 0o600)
		st, err := (&File{Path: p}).Load()
		switch {
		case want == "" && (err != nil || len(st.Dnats)+len(st.Snats) != 0):
			t.Errorf("%s: %+v %v", content, st, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), p)):
			t.Errorf("%s: %v, want an error naming the file and saying %q", content, err, want)
		}
	}
}

// TestLoadUnreadable runs Load as an unprivileged user (root reads any
// file, so the test re-runs itself as nobody) on a file only root may
// read: the error names the file and the reason, and the file stays.
func TestLoadUnreadable(t *testing.T) {
	if path := os.Getenv("NATMAP_STORE_LOAD"); path != "" {
		_, err := (&File{Path: path}).Load()
		fmt.Println(err)
		return
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but the test needs root to switch to an unprivileged user")
		}
		t.Skip("needs root to switch to an unprivileged user")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "store.test")
	self, _ := os.ReadFile(os.Args[0])
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	path := filepath.Join(dir, "state.json")
	if err := os.WriteFile(path, []byte(`{"version": 1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestLoadUnreadable$")
	cmd.Env = append(os.Environ(), "NATMAP_STORE_LOAD="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "reading state file "+path) || !strings.Contains(string(out), "permission denied") {
		t.Errorf("as nobody: %s", out)
	}
	if b, _ := os.ReadFile(path); string(b) != `{"version": 1}` {
		t.Errorf("the file changed: %s", b)
	}
}
