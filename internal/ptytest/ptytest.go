// Package ptytest gives a test a pseudo-terminal, to run a command whose
// standard input is a terminal (as when a person types it).
package ptytest

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Open returns a new pseudo-terminal's two ends: what the test writes to
// the controller is what a program reading the terminal reads. Both are
// closed when the test ends.
func Open(t testing.TB) (controller, terminal *os.File) {
	t.Helper()
	c, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening a pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := unix.IoctlSetPointerInt(int(c.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlocking the pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(c.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("numbering the pseudo-terminal: %v", err)
	}
	term, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening the pseudo-terminal's end: %v", err)
	}
	t.Cleanup(func() { term.Close() })
	return c, term
}

// Typed runs cmd with a terminal as its standard input, on which typed
// (for example "y\n") is already waiting, and returns its exit status.
// cmd's standard output and error are the caller's to set.
func Typed(t testing.TB, cmd *exec.Cmd, typed string) int {
	t.Helper()
	c, term := Open(t)
	if _, err := c.WriteString(typed); err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = term
	err := cmd.Run()
	if exit, ok := err.(*exec.ExitError); ok {
		return exit.ExitCode()
	}
	if err != nil {
		t.Fatalf("running %s: %v", cmd, err)
	}
	return 0
}
