// Package store keeps natmap's desired state in a versioned JSON file and a
// journal beside it.
//
// Whole writes are atomic: the new content goes to a temporary file in the
// same directory, which is synced, renamed over the state file, and the
// directory is synced, so a crash at any moment leaves either the old file
// or the new one, never a mix. A file that cannot be read or parsed is an
// error naming the file and the problem; it is never replaced by an empty
// state.
//
// One change is not a whole write: it is a line appended to the journal,
// PATH.journal, and synced, so it costs the same with 10 rules or 10,000
// (see journal.go).
package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// Version is the format version this package writes and reads.
const Version = 1

// file is the on-disk shape: the state with a version.
type file struct {
	Version int `json:"version"`
	nat.State
}

// File is a state file. It implements nat.Store.
type File struct {
	// Path is the state file's path.
	Path string
	// earlier holds the file's content when Load found the earlier
	// natmap's format; FinishMigration keeps it as a backup.
	earlier []byte
	// Log receives what Load noticed in the journal (an incomplete last
	// record, a journal for other content); nil discards it.
	Log *slog.Logger
	// rename replaces the file; os.Rename unless a test stands in for a
	// crash before it.
	rename func(oldpath, newpath string) error
	// syncDir syncs a directory; syncDir (the function) unless a test
	// stands in for a disk that fails it.
	syncDir func(dir string) error

	journal journal // the open journal, after a Save; see journal.go
}

// ErrNotSynced marks a file that was replaced (readers see the new
// content) but whose directory could not be synced: the replacement may
// not survive a power loss. It is not a failure to roll back: the old
// content is gone either way.
var ErrNotSynced = errors.New("replaced, but its directory could not be synced")

// Load reads the state. A missing file is an empty state; anything else that
// is not a valid state file is an error naming the file.
//
// The state file and its journal are read as a pair that belong together,
// even while a running daemon writes the state whole (a reload).
func (f *File) Load() (nat.State, error) {
	b, jb, err := f.readPair()
	if errors.Is(err, fs.ErrNotExist) {
		return nat.State{}, nil
	}
	if err != nil {
		return nat.State{}, err
	}
	st, err := Decode(b)
	if err == nil {
		return f.replayJournal(b, st, jb)
	}
	if !isEarlier(b) {
		return nat.State{}, fmt.Errorf("state file %s: %w", f.Path, err)
	}
	var e nat.EarlierState
	if err := json.Unmarshal(b, &e); err != nil {
		return nat.State{}, fmt.Errorf("state file %s (the earlier natmap's format): %w", f.Path, err)
	}
	if st, err = e.Migrate(); err == nil {
		err = st.Validate()
	}
	if err != nil {
		return nat.State{}, fmt.Errorf("state file %s (the earlier natmap's format): %w", f.Path, err)
	}
	f.earlier = b
	return st, nil
}

// readPair reads the state file and then its journal (nil when there is
// none), again until the state file is the same before and after: Save
// replaces the state file before the journal, so the journal read then is
// the one for it, or an older one that Load ignores.
func (f *File) readPair() (state, journal []byte, err error) {
	for range 100 {
		b, err := os.ReadFile(f.Path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, err
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading state file %s: %w", f.Path, err)
		}
		jb, err := os.ReadFile(f.JournalPath())
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("reading state journal %s: %w", f.JournalPath(), err)
		}
		if again, err := os.ReadFile(f.Path); err == nil && bytes.Equal(again, b) {
			return b, jb, nil
		}
	}
	return nil, nil, fmt.Errorf("reading state file %s: it kept changing while being read", f.Path)
}

// isEarlier reports a state file of the earlier natmap: a JSON object
// with no "version" but its keys.
func isEarlier(b []byte) bool {
	var keys map[string]json.RawMessage
	if json.Unmarshal(b, &keys) != nil {
		return false
	}
	if _, ok := keys["version"]; ok {
		return false
	}
	for _, k := range []string{"mapping", "dnats", "snats", "hairpins", "policy_routes"} {
		if _, ok := keys[k]; ok {
			return true
		}
	}
	return false
}

// Migrated reports that Load converted the earlier natmap's format.
func (f *File) Migrated() bool { return f.earlier != nil }

// BackupPath is where FinishMigration keeps the earlier file.
func (f *File) BackupPath() string { return f.Path + ".earlier-natmap.bak" }

// FinishMigration keeps the earlier file beside the state file and
// rewrites the state file in natmap's format. Call it only once the daemon
// started with the migrated state.
func (f *File) FinishMigration(st nat.State) error {
	if f.earlier == nil {
		return nil
	}
	if err := writeAtomic(f.BackupPath(), f.earlier, 0o600, os.Rename, syncDir); err != nil {
		return fmt.Errorf("keeping the earlier state file: %w", err)
	}
	if err := f.Save(st); err != nil {
		return err
	}
	f.earlier = nil
	return nil
}

// Decode parses and validates the content of a state file.
func Decode(b []byte) (nat.State, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nat.State{}, errors.New("the file is empty (a valid state file has at least {\"version\": 1})")
	}
	// One strict decode; only a file that fails it is read again, to say
	// what is most basic first: not JSON, no version, another version.
	var st struct {
		Version *int `json:"version"`
		nat.State
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	err := dec.Decode(&st)
	if err == nil {
		if _, end := dec.Token(); end != io.EOF {
			err = errors.New("more after the state")
		}
	}
	if err != nil {
		var probe struct {
			Version *int `json:"version"`
		}
		if perr := json.Unmarshal(b, &probe); perr != nil {
			return nat.State{}, fmt.Errorf("not valid JSON: %w", perr)
		}
		st.Version = probe.Version
	}
	if st.Version == nil {
		return nat.State{}, errors.New(`no "version" key`)
	}
	if *st.Version != Version {
		return nat.State{}, fmt.Errorf("format version %d is not supported (this natmap reads version %d)", *st.Version, Version)
	}
	if err != nil {
		return nat.State{}, fmt.Errorf("not a natmap state: %w", err)
	}
	if err := st.State.Validate(); err != nil {
		return nat.State{}, err
	}
	return st.State, nil
}

// Encode renders a state as the file content.
func Encode(st nat.State) ([]byte, error) {
	if st.Dnats == nil {
		st.Dnats = []nat.DNAT{}
	}
	b, err := json.MarshalIndent(file{Version: Version, State: st}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Save replaces the state file atomically, with mode 0600, and starts a
// new journal for it.
func (f *File) Save(st nat.State) error {
	b, err := Encode(st)
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	rename, sync := f.rename, f.syncDir
	if rename == nil {
		rename = os.Rename
	}
	if sync == nil {
		sync = syncDir
	}
	return f.saveWithJournal(b, rename, sync)
}

// WriteFile replaces path atomically with b (mode perm): a reader sees the
// old content or the new, never a mix, even across a crash.
func WriteFile(path string, b []byte, perm os.FileMode) error {
	return writeAtomic(path, b, perm, os.Rename, syncDir)
}

// writeAtomic is: temp file, write, fsync, rename, fsync the directory. A
// failure to sync the directory after the rename wraps ErrNotSynced: the
// new content is in place.
func writeAtomic(path string, b []byte, perm os.FileMode, rename func(oldpath, newpath string) error, sync func(string) error) error {
	tmp, err := writeTemp(path, b, perm)
	if err != nil {
		return err
	}
	defer tmp.Close()
	if err := rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	if err := sync(filepath.Dir(path)); err != nil {
		return fmt.Errorf("%s %w: %v", path, ErrNotSynced, err)
	}
	return nil
}

// writeTemp writes b (mode perm) to a new synced file beside path, still
// open, for the caller to rename over path or remove.
func writeTemp(path string, b []byte, perm os.FileMode) (*os.File, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	err = tmp.Chmod(perm)
	if err == nil {
		_, err = tmp.Write(b)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	return tmp, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// Lock takes an exclusive lock on PATH.lock, so that two daemons never
// share a state file. The lock lasts until the returned file is closed or
// the process ends.
func Lock(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	lf, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another natmap daemon is using state file %s", path)
		}
		return nil, fmt.Errorf("locking %s.lock: %w", path, err)
	}
	return lf, nil
}
