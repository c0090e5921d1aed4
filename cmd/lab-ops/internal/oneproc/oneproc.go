// Package oneproc runs lab-ops on one processor (GOMAXPROCS=1), set in
// its init, unless the GOMAXPROCS environment variable says otherwise.
//
// A CLI run of lab-ops is one request to the daemon and a few
// milliseconds of work on one goroutine; most of its time is the
// process's start. A second processor adds nothing to that but its own
// allocation caches and the memory pages they touch. The init runs among
// the first of the binary (the package imports only runtime and
// syscall), before the packages whose initialization allocates most. The
// daemon calls Restore.
package oneproc

import (
	"runtime"
	"syscall"
)

// lowered: init set GOMAXPROCS.
var lowered bool

func init() {
	if _, set := syscall.Getenv("GOMAXPROCS"); !set {
		runtime.GOMAXPROCS(1)
		lowered = true
	}
}

// Restore gives the process the runtime's default GOMAXPROCS (every CPU
// it may use, and updated as that changes), if init lowered it.
func Restore() {
	if lowered {
		runtime.SetDefaultGOMAXPROCS()
	}
}
