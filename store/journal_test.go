package store

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lab-ops/natmap/nat"
)

// dnat is a DNAT rule of port 1000+i to its own host.
func dnat(i int) nat.DNAT {
	port := uint16(1000 + i)
	return nat.DNAT{ExtIP: netip.MustParseAddr("203.0.113.43"), IntIP: netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(1 + i%250)}),
		Ports: nat.PortList{{From: port, To: port, Target: port}}, Proto: nat.ProtoTCP}
}

// journalled is a store with a saved state of n rules and a model of it
// that records add and delete as deltas, the way the service does.
type journalled struct {
	t    *testing.T
	f    *File
	st   nat.State
	logs *bytes.Buffer
}

func newJournalled(t *testing.T, n int) *journalled {
	t.Helper()
	logs := &bytes.Buffer{}
	j := &journalled{t: t, logs: logs, f: &File{Path: filepath.Join(t.TempDir(), "state.json"), Log: slog.New(slog.NewTextHandler(logs, nil))}}
	for i := range n {
		j.st.Dnats = append(j.st.Dnats, dnat(i))
	}
	j.st = j.st.Replay()
	if err := j.f.Save(j.st); err != nil {
		t.Fatal(err)
	}
	return j
}

func (j *journalled) record(d nat.Delta) error {
	next := j.st.Replay(d)
	if err := j.f.Record(d, func() nat.State { return next }); err != nil {
		return err
	}
	j.st = next
	return nil
}

func (j *journalled) add(i int) {
	j.t.Helper()
	if err := j.record(nat.Delta{Add: nat.State{Dnats: []nat.DNAT{dnat(i)}}}); err != nil {
		j.t.Fatal(err)
	}
}

func (j *journalled) del(i int) {
	j.t.Helper()
	if err := j.record(nat.Delta{Del: nat.State{Dnats: []nat.DNAT{dnat(i)}}}); err != nil {
		j.t.Fatal(err)
	}
}

// loads checks that a fresh File (a restarted daemon) loads the model.
func (j *journalled) loads() {
	j.t.Helper()
	got, err := (&File{Path: j.f.Path}).Load()
	if err != nil {
		j.t.Fatal(err)
	}
	if !reflect.DeepEqual(got, j.st) {
		j.t.Fatalf("loaded %d rules, want %d:\n%+v\nwant\n%+v", len(got.Dnats), len(j.st.Dnats), got, j.st)
	}
}

func lines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// A change is one line appended to the journal, and the state file is not
// written; a restart replays the journal.
func TestJournalRecordsChangesAndReplays(t *testing.T) {
	j := newJournalled(t, 100)
	before, _ := os.ReadFile(j.f.Path)
	j.add(100)
	j.add(101)
	j.del(5)
	j.add(5) // back, as it was
	j.del(7)
	if now, _ := os.ReadFile(j.f.Path); !bytes.Equal(now, before) {
		t.Error("a change rewrote the state file")
	}
	if n := lines(t, j.f.JournalPath()); n != 1+5 {
		t.Errorf("the journal has %d lines, want a header and 5 changes", n)
	}
	j.loads()
	if len(j.st.Dnats) != 101 {
		t.Fatalf("model has %d rules", len(j.st.Dnats))
	}
}

// A record cut short by a crash was never acknowledged: load ignores it and
// says so, and the next start writes the state whole before it records
// anything after it.
func TestJournalIgnoresAnIncompleteLastRecord(t *testing.T) {
	j := newJournalled(t, 3)
	j.add(3)
	jf, err := os.OpenFile(j.f.JournalPath(), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	jf.WriteString(`{"del":{"dnats":[{"ext_ip":"203.0.113.43","int_`)
	jf.Close()
	logs := &bytes.Buffer{}
	f := &File{Path: j.f.Path, Log: slog.New(slog.NewTextHandler(logs, nil))}
	got, err := f.Load()
	if err != nil || !reflect.DeepEqual(got, j.st) {
		t.Fatalf("load: %v\n%+v\nwant %+v", err, got, j.st)
	}
	if !strings.Contains(logs.String(), "incomplete last change") {
		t.Errorf("not logged: %s", logs)
	}
	// The restarted daemon's first change writes the state whole.
	next := got.Replay(nat.Delta{Add: nat.State{Dnats: []nat.DNAT{dnat(9)}}})
	if err := f.Record(nat.Delta{}, func() nat.State { return next }); err != nil {
		t.Fatal(err)
	}
	if n := lines(t, f.JournalPath()); n != 1 {
		t.Errorf("the journal has %d lines after a whole write, want the header only", n)
	}
	if st, err := (&File{Path: f.Path}).Load(); err != nil || !reflect.DeepEqual(st, next) {
		t.Fatalf("after the whole write: %v %+v", err, st)
	}
}

// A journal for other content of the state file (a whole write whose new
// journal did not get into place, or a hand edit) is not replayed.
func TestJournalForOtherContentIsIgnored(t *testing.T) {
	j := newJournalled(t, 3)
	j.add(3)
	stale, _ := os.ReadFile(j.f.JournalPath())
	j.add(4)
	if err := j.f.Compact(0, func() nat.State { return j.st }); err != nil {
		t.Fatal(err)
	}
	// A crash after the state file was replaced, before the new journal
	// was renamed into place: the old journal is still there.
	if err := os.WriteFile(j.f.JournalPath(), stale, 0o600); err != nil {
		t.Fatal(err)
	}
	j.loads() // rule 4 and the compaction's content, the stale journal ignored

	// A hand edit wins over the journal, and the journal's changes are
	// reported.
	j.add(5)
	edited := nat.State{Dnats: []nat.DNAT{dnat(42)}}
	b, _ := Encode(edited)
	if err := os.WriteFile(j.f.Path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	got, err := (&File{Path: j.f.Path, Log: slog.New(slog.NewTextHandler(logs, nil))}).Load()
	if err != nil || !reflect.DeepEqual(got.Dnats, edited.Dnats) {
		t.Fatalf("edited file: %v %+v", err, got)
	}
	if !strings.Contains(logs.String(), "changes=1") || !strings.Contains(logs.String(), "not replayed") {
		t.Errorf("not reported: %s", logs)
	}
}

// Compact writes the whole state once the changes have stopped for the
// quiet period; after it the state file alone is the state.
func TestJournalCompact(t *testing.T) {
	j := newJournalled(t, 3)
	whole := func() nat.State { return j.st }
	if err := j.f.Compact(0, whole); err != nil || lines(t, j.f.JournalPath()) != 1 {
		t.Fatalf("nothing recorded, yet: %v", err)
	}
	j.add(3)
	if err := j.f.Compact(time.Hour, whole); err != nil || lines(t, j.f.JournalPath()) != 2 {
		t.Fatalf("compacted before the quiet period: %v", err)
	}
	time.Sleep(20 * time.Millisecond)
	if err := j.f.Compact(10*time.Millisecond, whole); err != nil {
		t.Fatal(err)
	}
	if n := lines(t, j.f.JournalPath()); n != 1 {
		t.Errorf("journal has %d lines after compaction", n)
	}
	alone, err := Decode(must(os.ReadFile(j.f.Path)))
	if err != nil || !reflect.DeepEqual(alone, j.st) {
		t.Fatalf("state file alone: %v %+v", err, alone)
	}

	// A daemon that starts with a journal left by a crash folds it in at
	// its first compaction, without a change of its own.
	j.add(4)
	j.f.closeJournal() // the daemon stopped without folding it in
	f := &File{Path: j.f.Path}
	st, err := f.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Compact(time.Hour, func() nat.State { return st }); err != nil {
		t.Fatal(err)
	}
	if n := lines(t, f.JournalPath()); n != 1 {
		t.Errorf("the left journal was not folded in: %d lines", n)
	}
	j.loads()
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// A journal grown past the state file's size (and 1 MiB) is folded in by
// the next change, so a replay is never longer than a whole write.
func TestJournalBounded(t *testing.T) {
	j := newJournalled(t, 10)
	for i := range 20000 {
		if i%2 == 0 {
			j.add(1000)
		} else {
			j.del(1000)
		}
	}
	fi, err := os.Stat(j.f.JournalPath())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > minJournal+4096 {
		t.Errorf("journal is %d bytes after 20,000 changes", fi.Size())
	}
	if n := lines(t, j.f.JournalPath()); n >= 20000 {
		t.Errorf("the journal was never folded in: %d lines", n)
	}
	j.loads()
}

// A change whose line cannot be written is refused, leaves nothing behind,
// and the next change writes the state whole.
func TestJournalWriteFailure(t *testing.T) {
	j := newJournalled(t, 3)
	j.add(3)
	j.f.journal.f.Close() // every write fails now, as on a failing disk
	if err := j.record(nat.Delta{Add: nat.State{Dnats: []nat.DNAT{dnat(4)}}}); err == nil || !strings.Contains(err.Error(), j.f.JournalPath()) {
		t.Fatalf("a failed write: %v", err)
	}
	j.loads() // rule 4 is not there
	j.add(5)
	if n := lines(t, j.f.JournalPath()); n != 1 {
		t.Errorf("after a failure, the next change did not write the state whole: %d lines", n)
	}
	j.loads()
}

// A damaged line in the middle of the journal stops the load with the
// file and line named.
func TestJournalDamagedLine(t *testing.T) {
	j := newJournalled(t, 3)
	j.add(3)
	j.add(4)
	b, _ := os.ReadFile(j.f.JournalPath())
	ls := bytes.SplitAfter(b, []byte("\n"))
	ls[1] = []byte("{\"add\": {\"dnats\": \"oops\"}}\n")
	if err := os.WriteFile(j.f.JournalPath(), bytes.Join(ls, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := (&File{Path: j.f.Path}).Load()
	if err == nil || !strings.Contains(err.Error(), j.f.JournalPath()+" line 2") {
		t.Fatalf("load: %v", err)
	}
	if err := os.WriteFile(j.f.JournalPath(), []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (&File{Path: j.f.Path}).Load(); err == nil || !strings.Contains(err.Error(), "not a natmap journal header") {
		t.Fatalf("load: %v", err)
	}
}

// A last line that does not decode is a write torn by a crash: the changes
// before it are kept, and the load says what it dropped.
func TestJournalTornLastLine(t *testing.T) {
	j := newJournalled(t, 3)
	j.add(3)
	before := j.st
	j.add(4)
	b, _ := os.ReadFile(j.f.JournalPath())
	ls := bytes.SplitAfter(b, []byte("\n"))
	ls[2] = []byte("{\"add\": {\"dnats\": [{\"ext_ip\": \"203.0\u0000\u0000\n")
	if err := os.WriteFile(j.f.JournalPath(), bytes.Join(ls, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	st, err := (&File{Path: j.f.Path, Log: slog.New(slog.NewTextHandler(&log, nil))}).Load()
	if err != nil {
		t.Fatalf("load with a torn last line: %v", err)
	}
	if !reflect.DeepEqual(st, before) {
		t.Errorf("state with the torn line dropped:\n%+v\nwant\n%+v", st, before)
	}
	if !strings.Contains(log.String(), "dropping the state journal's last change") || !strings.Contains(log.String(), "line=3") {
		t.Errorf("the load did not say what it dropped:\n%s", log.String())
	}
}

// A reload reads the state file and journal while the daemon keeps
// changing and compacting them: every load is a state the daemon was in.
func TestJournalLoadDuringWrites(t *testing.T) {
	j := newJournalled(t, 0)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(stop)
		for i := range 400 {
			j.add(i) // rules 0..i, in order
			if i%7 == 0 {
				if err := j.f.Compact(0, func() nat.State { return j.st }); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	loader := &File{Path: j.f.Path}
	last, loads := -1, 0
	for done := false; !done; loads++ {
		select {
		case <-stop:
			done = true
		default:
		}
		st, err := loader.Load()
		if err != nil {
			t.Fatal(err)
		}
		want := nat.State{}
		for k := range st.Dnats {
			want.Dnats = append(want.Dnats, dnat(k))
		}
		if want = want.Replay(); !reflect.DeepEqual(st.Dnats, want.Dnats) {
			t.Fatalf("a load of %d rules is not a state the daemon was in: %+v", len(st.Dnats), st.Dnats)
		}
		if len(st.Dnats) < last {
			t.Fatalf("a load went back from %d rules to %d", last, len(st.Dnats))
		}
		last = len(st.Dnats)
	}
	wg.Wait()
	if last != 400 {
		t.Errorf("the last load, after the writes, had %d rules", last)
	}
	t.Logf("%d loads during 400 changes", loads)
}

// FuzzJournal: whatever follows a valid header, Load does not panic, and
// what it returns is a valid state.
func FuzzJournal(f *testing.F) {
	f.Add([]byte(`{"del":{"dnats":null},"add":{"dnats":[{"ext_ip":"203.0.113.43","int_ip":"10.0.0.9","ports":"25","proto":"tcp"}]}}` + "\n"))
	f.Add([]byte(`{"del":{"dnats":[{"ext_ip":"203.0.113.43","int_ip":"10.0.0.1","ports":"1","proto":"tcp"}]},"add":{"next_mapping_id":3}}` + "\n{\"add\""))
	f.Add([]byte(`{"add":{"mappings":[{"id":1,"container":"web","host_ip":"0.0.0.0","host_port":80,"container_port":80,"proto":"tcp"}],"next_mapping_id":2}}` + "\n"))
	dir := f.TempDir()
	base, err := Encode(nat.State{Dnats: []nat.DNAT{dnat(0)}})
	if err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(dir, "state.json")
	if err := os.WriteFile(path, base, 0o600); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, records []byte) {
		if err := os.WriteFile(path+".journal", append(header(base), records...), 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := (&File{Path: path}).Load()
		if err != nil {
			return
		}
		if err := st.Validate(); err != nil {
			t.Fatalf("loaded an invalid state: %v", err)
		}
	})
}

// A directory that will not sync after the state file was replaced does
// not make the save a failure: the new content is in place, and a caller
// that rolled back would disagree with the file (a "failed" clear would
// empty the kernel at the next start).
func TestSaveDirectorySyncFails(t *testing.T) {
	dir := t.TempDir()
	var log strings.Builder
	f := &File{Path: filepath.Join(dir, "state.json"), Log: slog.New(slog.NewTextHandler(&log, nil)),
		syncDir: func(string) error { return errors.New("input/output error") }}
	st := nat.State{Dnats: []nat.DNAT{dnat(7)}}
	if err := f.Save(st); err != nil {
		t.Fatalf("save with a failing directory sync: %v", err)
	}
	got, err := (&File{Path: f.Path}).Load()
	if err != nil || !reflect.DeepEqual(got, st) {
		t.Errorf("the file after the save: %+v %v, want %+v", got, err, st)
	}
	if !strings.Contains(log.String(), "may not survive a power loss") {
		t.Errorf("the save did not say it may not be durable:\n%s", log.String())
	}
	// The same for a file written whole by WriteFile's callers: the error
	// says the content is in place.
	err = writeAtomic(filepath.Join(dir, "x"), []byte("new"), 0o600, os.Rename, func(string) error { return errors.New("eio") })
	if !errors.Is(err, ErrNotSynced) {
		t.Errorf("writeAtomic with a failing directory sync: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "x")); string(b) != "new" {
		t.Errorf("content after a failing directory sync: %q", b)
	}
}
