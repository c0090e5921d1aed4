package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// notify sends state to the service manager ($NOTIFY_SOCKET, as
// sd_notify(3) does); without the variable it does nothing. A leading '@'
// names an abstract socket.
func notify(state ...string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("telling the service manager %s: %w", state, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.Join(state, "\n"))); err != nil {
		return fmt.Errorf("telling the service manager %s: %w", state, err)
	}
	return nil
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, which a RELOADING=1
// message carries.
func monotonicUsec() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return "0"
	}
	return fmt.Sprint(ts.Nano() / int64(time.Microsecond))
}

// journalStream reports that stderr is a journald stream (JOURNAL_STREAM
// names stderr's device and inode, as systemd.exec(5) says to check).
func journalStream(stderr *os.File) bool {
	want := os.Getenv("JOURNAL_STREAM")
	if want == "" || stderr == nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(stderr.Fd()), &st); err != nil {
		return false
	}
	return want == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// journalWriter prefixes each log line with its syslog priority, as
// sd-daemon(3) says (<3> error, <4> warning, <6> info, <7> debug), so
// `journalctl -p warning` finds the warnings. The lines come from a text
// handler without time (journald stamps each line): "level=WARN msg=...".
type journalWriter struct{ w io.Writer }

func (j journalWriter) Write(p []byte) (int, error) {
	prio := "<6>"
	switch {
	case bytes.HasPrefix(p, []byte("level=ERROR")):
		prio = "<3>"
	case bytes.HasPrefix(p, []byte("level=WARN")):
		prio = "<4>"
	case bytes.HasPrefix(p, []byte("level=DEBUG")):
		prio = "<7>"
	}
	if _, err := j.w.Write(append([]byte(prio), p...)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// newLogger is the daemon's logger: to the journal with priorities and no
// time of its own, or plain text with times elsewhere.
func newLogger(stderr io.Writer, verbose int) *slog.Logger {
	opts := &slog.HandlerOptions{Level: logLevel(verbose), AddSource: verbose >= 2}
	if f, ok := stderr.(*os.File); ok && journalStream(f) {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
		return slog.New(slog.NewTextHandler(journalWriter{stderr}, opts))
	}
	return slog.New(slog.NewTextHandler(stderr, opts))
}

// watchdogInterval is how often the service manager wants WATCHDOG=1
// (half of WatchdogSec), or 0 when it wants none.
func watchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// watchdog sends WATCHDOG=1 every interval for as long as alive answers
// (it takes the service lock and asks the socket): a daemon that hangs
// stops sending, and the service manager restarts it.
func watchdog(ctx context.Context, interval time.Duration, alive func(context.Context) error, log *slog.Logger) {
	every(ctx, interval, func() {
		check, cancel := context.WithTimeout(ctx, interval)
		defer cancel()
		if err := alive(check); err != nil {
			log.Warn("not alive: no watchdog ping this time", "err", err)
			return
		}
		if err := notify("WATCHDOG=1"); err != nil {
			log.Warn("watchdog ping not sent", "err", err)
		}
	})
}

// starting tells the service manager, while a long start-up runs, what it
// does and that it needs more time (EXTEND_TIMEOUT_USEC), until done is
// closed; it gives up extending after limit, so a start that hangs still
// times out.
func starting(status string, done <-chan struct{}, every, limit time.Duration) {
	begun := time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		took := time.Since(begun)
		if took > limit {
			return
		}
		_ = notify("STATUS="+fmt.Sprintf("%s (%s so far)", status, took.Round(time.Second)),
			"EXTEND_TIMEOUT_USEC="+strconv.FormatInt(int64(3*every/time.Microsecond), 10), "WATCHDOG=1")
	}
}
