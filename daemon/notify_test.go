package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Under journald (JOURNAL_STREAM names stderr) each line carries its
// syslog priority and no time of its own; elsewhere lines are plain text
// with times.
func TestJournalLogging(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	log := newLogger(f, 1)
	log.Debug("looking")
	log.Info("serving", "socket", "/run/natmap.sock")
	log.Warn("port held", "port", 25)
	log.Error("reload refused")
	b, _ := os.ReadFile(f.Name())
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	want := []string{"<7>level=DEBUG msg=looking", "<6>level=INFO msg=serving socket=/run/natmap.sock", "<4>level=WARN msg=\"port held\" port=25", "<3>level=ERROR msg=\"reload refused\""}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("journal lines:\n%s\nwant\n%s", b, strings.Join(want, "\n"))
	}

	// Another stream (the variable names a different file): plain text.
	g, _ := os.Create(filepath.Join(t.TempDir(), "other"))
	defer g.Close()
	newLogger(g, 0).Warn("port held")
	if b, _ := os.ReadFile(g.Name()); !strings.HasPrefix(string(b), "time=") {
		t.Errorf("not a journal stream, yet: %s", b)
	}
}

// The watchdog pings every interval while the daemon proves alive, and
// stops pinging while it does not (so the service manager restarts it).
func TestWatchdog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "40000")
	t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))
	every := watchdogInterval()
	if every != 20*time.Millisecond {
		t.Fatalf("interval %v, want half of WATCHDOG_USEC", every)
	}
	var hung atomic.Bool
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go watchdog(ctx, every, func(ctx context.Context) error {
		if hung.Load() {
			<-ctx.Done()
			return errors.New("hung")
		}
		return nil
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	pings := func(d time.Duration) int {
		n := 0
		buf := make([]byte, 64)
		deadline := time.Now().Add(d)
		for {
			conn.SetReadDeadline(deadline)
			m, err := conn.Read(buf)
			if err != nil {
				return n
			}
			if string(buf[:m]) == "WATCHDOG=1" {
				n++
			}
		}
	}
	if n := pings(300 * time.Millisecond); n < 5 {
		t.Errorf("%d pings in 300ms while alive, want about 15", n)
	}
	hung.Store(true)
	pings(50 * time.Millisecond) // one may be on its way
	if n := pings(300 * time.Millisecond); n != 0 {
		t.Errorf("%d pings while hung, want none", n)
	}
	t.Setenv("WATCHDOG_PID", "1")
	if watchdogInterval() != 0 {
		t.Error("a watchdog meant for another process was taken")
	}
}
