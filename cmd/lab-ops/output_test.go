package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"

	"github.com/lab-ops/natmap/nat"
)

// `--json ls` prints the daemon's reply indented; it must read exactly as
// the reply decoded and encoded again, as every other command prints.
func TestPrintRawJSONMatchesPrintJSON(t *testing.T) {
	list := nat.ListResponse{
		Docker: []nat.DockerPortMap{},
		Dnats: []nat.DnatEntry{{DnatConfig: nat.DnatConfig{ExtIP: "203.0.113.43", IntIP: "10.0.0.101", Ports: "25,2222:22", Proto: "tcp", PreserveSrcIP: true},
			Status: "partial", Reason: "port 25 <held> & busy", Counter: &nat.Counter{Packets: 3, Bytes: 180}}},
		Snats: []nat.SnatEntry{}, Hairpins: []nat.HairpinEntry{}, PolicyRoutes: []nat.PolicyRouteEntry{},
	}
	wire, err := json.Marshal(list) // as the daemon sends it
	if err != nil {
		t.Fatal(err)
	}
	var decoded, raw bytes.Buffer
	(&output{stdout: &decoded}).printJSON(list)
	if err := (&output{stdout: &raw}).printRawJSON(append(wire, '\n')); err != nil {
		t.Fatal(err)
	}
	if raw.String() != decoded.String() {
		t.Errorf("raw:\n%s\ndecoded:\n%s", raw.String(), decoded.String())
	}
	if err := (&output{stdout: &raw}).printRawJSON([]byte("{half")); err == nil {
		t.Error("a reply that is not JSON was printed")
	}
}

// A daemon's message names request keys; the CLI names the flags, and
// leaves alone words that only contain a key (a policy rule's name).
func TestFlagNames(t *testing.T) {
	msg := `ext_ip: 198.51.100.7 is not an address of this host (natmap's rule ext_ip_not_local: ...); or give ext_if alone`
	got := flagNames().ReplaceAllStringFunc(msg, func(key string) string { return flagOf[key] })
	want := `--ext-ip: 198.51.100.7 is not an address of this host (natmap's rule ext_ip_not_local: ...); or give --ext-if alone`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// indentJSON writes what json.Indent writes, for any valid JSON.
func FuzzIndentJSON(f *testing.F) {
	for _, seed := range []string{
		`{}`, `[]`, `{"a":{},"b":[],"c":[{}],"d":[[],[1,2]]}`, ` { "a" : [ 1 , 2.5e3 , -0 ] , "b" : null } `,
		`"a \"quoted\" {[,:]} \\ back\\slash \u00e9 \n"`, `[true,false,null,"",{"":""}]`,
		"{\"k\":\"v\"}\n", `{"dnats":[{"ext_ip":"203.0.113.43","ports":"25,2222:22","reason":"port 25 \u003cheld\u003e \u0026 busy"}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		src = bytes.TrimSpace(src)
		if !json.Valid(src) {
			return
		}
		var want bytes.Buffer
		if err := json.Indent(&want, src, "", "  "); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		w := bufio.NewWriter(&got)
		indentJSON(w, src)
		w.Flush()
		if got.String() != want.String() {
			t.Errorf("%q:\ngot  %q\nwant %q", src, got.String(), want.String())
		}
	})
}
