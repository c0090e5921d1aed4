package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// The journal, PATH.journal, holds the changes made since the state file
// was last written whole: a header line naming the state file content it
// follows (its SHA-256), then one nat.Delta a line. A change is acknowledged
// only once its line is synced, so at load:
//
//   - complete lines are replayed onto the state file, in order;
//   - an incomplete last line (the daemon stopped while writing it) was
//     never acknowledged and is ignored; so is a last line that does not
//     decode (a write torn by a crash can end in a newline), with a warning
//     that names it, while a damaged line before the last stops the load;
//   - a journal whose header names other content is ignored: either the
//     state file was written whole after it (its changes are all in the
//     file) or somebody edited the file, whose content then wins.
//
// Save writes the state file and a new journal for it; the journal is
// renamed into place only once the new state file is durable, so a crash
// never pairs the old state file with the new journal. The daemon writes
// the state file whole when it has been idle for a second (Compact, called
// every second, so one to two seconds after the last change), when
// it stops, and when the journal outgrows the state file, so a replay is
// never longer than a whole write and the state file alone is the whole
// state whenever the daemon is not busy.

// journalVersion is the header's format version.
const journalVersion = 1

// minJournal is the journal size below which a whole write is never due.
const minJournal = 1 << 20

type journalHeader struct {
	Journal int    `json:"journal"`
	Base    string `json:"base"`
}

// journal is the open journal of a File.
type journal struct {
	f       *os.File
	size    int64     // bytes written, header included
	limit   int64     // size past which Record writes the state whole
	records int       // changes recorded since the last whole write
	last    time.Time // when the last one was
	// clean: with no journal open, the one on disk was found to hold no
	// change, so Compact need not look again.
	clean bool
}

// JournalPath is where the journal of the state file is.
func (f *File) JournalPath() string { return f.Path + ".journal" }

func header(content []byte) []byte {
	sum := sha256.Sum256(content)
	b, _ := json.Marshal(journalHeader{Journal: journalVersion, Base: "sha256:" + hex.EncodeToString(sum[:])})
	return append(b, '\n')
}

// Record implements nat.Store: it appends d to the journal and syncs it.
// The first change after start, or one that finds the journal longer than
// the state file, writes the state whole instead.
func (f *File) Record(d nat.Delta, whole func() nat.State) error {
	j := &f.journal
	if j.f == nil || j.size > j.limit {
		return f.Save(whole())
	}
	line, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("encoding a change: %w", err)
	}
	line = append(line, '\n')
	_, err = j.f.WriteAt(line, j.size)
	if err == nil {
		err = unix.Fdatasync(int(j.f.Fd()))
	}
	if err != nil {
		// The change is refused: take its line back, and write the state
		// whole next time rather than trust this journal again.
		j.f.Truncate(j.size)
		f.closeJournal()
		return fmt.Errorf("writing %s: %w", f.JournalPath(), err)
	}
	j.size += int64(len(line))
	j.records++
	j.last = time.Now()
	return nil
}

// Compact implements nat.Store: it writes the state whole when changes were
// recorded and none for quiet, or when a journal left by an earlier run
// holds changes.
func (f *File) Compact(quiet time.Duration, whole func() nat.State) error {
	j := &f.journal
	if j.f == nil {
		if j.clean {
			return nil
		}
		// Every header is as long as that of no content.
		if fi, err := os.Stat(f.JournalPath()); err != nil || fi.Size() <= int64(len(header(nil))) {
			j.clean = true
			return nil
		}
	} else if j.records == 0 || time.Since(j.last) < quiet {
		return nil
	}
	return f.Save(whole())
}

func (f *File) closeJournal() {
	if f.journal.f != nil {
		f.journal.f.Close()
	}
	f.journal = journal{}
}

// saveWithJournal writes b as the state file and starts a new journal for
// it: new journal written (not yet in place), state file replaced and its
// directory synced, journal renamed into place and the directory synced.
//
// Once the state file is replaced the save has happened, whatever follows:
// memory, the file and the kernel agree on the new state. A directory that
// will not sync then only means it might not survive a power loss, which
// is logged; the save is not reported as failed (a caller that rolled its
// memory back would disagree with the file, and a "failed" clear would
// empty the kernel at the next start).
func (f *File) saveWithJournal(b []byte, rename func(oldpath, newpath string) error, sync func(string) error) error {
	head := header(b)
	next, err := writeTemp(f.JournalPath(), head, 0o600)
	if err != nil {
		return err
	}
	if err := writeAtomic(f.Path, b, 0o600, rename, sync); errors.Is(err, ErrNotSynced) {
		f.logger().Warn("the state file was replaced, but its directory could not be synced: the change may not survive a power loss", "state", f.Path, "err", err)
	} else if err != nil {
		next.Close()
		os.Remove(next.Name())
		return err
	}
	// The state is saved. A journal that does not get into place leaves
	// the old one, which names the old content and is ignored at load;
	// the next change then writes the state whole again.
	f.closeJournal()
	err = os.Rename(next.Name(), f.JournalPath())
	if err == nil {
		err = sync(filepath.Dir(f.Path))
	}
	if err != nil {
		next.Close()
		os.Remove(next.Name())
		f.logger().Warn("starting a new state journal failed; the next change writes the state file whole", "journal", f.JournalPath(), "err", err)
		return nil
	}
	f.journal = journal{f: next, size: int64(len(head)), limit: max(minJournal, int64(len(b)))}
	return nil
}

// replayJournal applies the changes in jb, the journal, to st, the state
// file's content b decoded.
func (f *File) replayJournal(b []byte, st nat.State, jb []byte) (nat.State, error) {
	lines := bytes.SplitAfter(jb, []byte("\n"))
	complete := func(l []byte) bool { return bytes.HasSuffix(l, []byte("\n")) }
	if len(jb) == 0 || !complete(lines[0]) {
		return st, nil // cut short while being started: nothing was recorded in it
	}
	if !bytes.Equal(lines[0], header(b)) {
		var h journalHeader
		if err := json.Unmarshal(lines[0], &h); err != nil || h.Journal != journalVersion {
			return nat.State{}, fmt.Errorf("state journal %s: line 1 is not a natmap journal header (move the file away to start from %s alone)", f.JournalPath(), f.Path)
		}
		if n := countComplete(lines[1:]); n > 0 {
			f.logger().Warn("the state journal follows other content of the state file, which wins; its changes are not replayed",
				"journal", f.JournalPath(), "changes", n, "state", f.Path)
		}
		return st, nil
	}
	last := 0 // the index in lines[1:] of the last complete line
	for i, l := range lines[1:] {
		if complete(l) {
			last = i
		}
	}
	var ds []nat.Delta
	for i, l := range lines[1:] {
		if len(l) == 0 {
			continue
		}
		if !complete(l) {
			f.logger().Info("ignoring the state journal's incomplete last change: it was being written when natmap stopped, and was never acknowledged",
				"journal", f.JournalPath())
			break
		}
		var d nat.Delta
		dec := json.NewDecoder(bytes.NewReader(l))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&d); err != nil {
			if i == last {
				f.logger().Warn("dropping the state journal's last change, which does not decode (a write torn by a crash); the changes before it are kept",
					"journal", f.JournalPath(), "line", i+2, "err", err, "kept", len(ds))
				break
			}
			return nat.State{}, fmt.Errorf("state journal %s line %d: %w", f.JournalPath(), i+2, err)
		}
		ds = append(ds, d)
	}
	st = st.Replay(ds...)
	if err := st.Validate(); err != nil {
		return nat.State{}, fmt.Errorf("state file %s with the %d changes of its journal: %w", f.Path, len(ds), err)
	}
	return st, nil
}

func countComplete(lines [][]byte) int {
	n := 0
	for _, l := range lines {
		if bytes.HasSuffix(l, []byte("\n")) {
			n++
		}
	}
	return n
}

func (f *File) logger() *slog.Logger {
	if f.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return f.Log
}
