package oneproc

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// The test binary imports the package: its init ran.
func TestOneProcessorUntilRestore(t *testing.T) {
	if v, set := os.LookupEnv("GOMAXPROCS"); set {
		// The child of TestTheEnvironmentDecides.
		if got := strconv.Itoa(runtime.GOMAXPROCS(0)); got != v {
			t.Fatalf("GOMAXPROCS=%s in the environment, the runtime has %s", v, got)
		}
		return
	}
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("GOMAXPROCS %d after init, want 1", got)
	}
	Restore()
	got := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(1)
	runtime.SetDefaultGOMAXPROCS()
	if want := runtime.GOMAXPROCS(0); got != want {
		t.Fatalf("GOMAXPROCS %d after Restore, want the runtime's default %d", got, want)
	}
	runtime.GOMAXPROCS(1)
}

// GOMAXPROCS in the environment is left as it is.
func TestTheEnvironmentDecides(t *testing.T) {
	if _, set := os.LookupEnv("GOMAXPROCS"); set {
		t.Skip("the child")
	}
	cmd := exec.Command(os.Args[0], "-test.run=TestOneProcessorUntilRestore", "-test.v")
	cmd.Env = append(os.Environ(), "GOMAXPROCS=3")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("%v\n%s", err, out)
	}
}
