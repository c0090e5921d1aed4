package config

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"

	"github.com/lab-ops/natmap/nat"
)

func schema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	s, err := c.Compile("../docs/natmap.schema.json")
	if err != nil {
		t.Fatalf("the schema does not compile: %v", err)
	}
	return s
}

// asJSON turns a YAML document into the values a JSON Schema checks.
func asJSON(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonschema.UnmarshalJSON(strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestExampleFile: the documented example parses, passes the schema, and
// says what the usage guide's mail-server script does.
func TestExampleFile(t *testing.T) {
	data, err := os.ReadFile("../docs/natmap.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := schema(t).Validate(asJSON(t, data)); err != nil {
		t.Errorf("the example fails the schema: %v", err)
	}
	c := f.Config
	if len(c.Dnat) != 1 || c.Dnat[0].Ports != "25,465,587,143,993,110,995,4190" || len(c.Snat) != 1 || c.Snat[0].ExtIf != "vmbr0" ||
		len(c.Hairpin) != 1 || c.Forwarding == nil || !c.Forwarding.IPv4 {
		t.Errorf("the example is not the mail-server script: %+v", c)
	}
	if f.Line("dnat", 0) != 17 || f.Line("hairpin", 0) != 30 {
		t.Errorf("entry lines: dnat[0] at %d, hairpin[0] at %d; want 17 and 30", f.Line("dnat", 0), f.Line("hairpin", 0))
	}
}

// TestExportRoundTrip: an exported configuration parses back to itself and
// passes the schema.
func TestExportRoundTrip(t *testing.T) {
	ifname, lan := "vmbr0", "10.0.0.0/24"
	c := nat.Config{Version: 1, Forwarding: &nat.ForwardingConfig{IPv4: true},
		Dnat: []nat.DnatConfig{{ExtIP: "203.0.113.43", IntIP: "10.0.0.101", Ports: "25,2525:25", Proto: "tcp", ExtIf: &ifname},
			{IntIP: "10.0.0.102", Ports: "443", Proto: "tcp", ExtIf: &ifname}}, // by interface
		Snat: []nat.SnatConfig{{IntIP: "10.0.0.0/24", ExtIP: "203.0.113.43", ExtIf: "vmbr0"},
			{IntIP: "10.0.1.0/24", ExtIf: "vmbr0"}}, // masquerade
		Hairpin: []nat.HairpinConfig{{ExtIP: "203.0.113.43", IntIP: "10.0.0.101", Ports: "25", Proto: "tcp", LanCIDR: &lan},
			{IntIP: "10.0.0.102", Ports: "443", Proto: "tcp", LanCIDR: &lan, ExtIf: &ifname}},
		PolicyRoutes: []nat.PolicyRouteConfig{{SrcIP: "10.0.0.101", Via: "10.0.0.1", Table: 100}},
		Docker: []nat.MappingConfig{{Container: "web", HostPort: 8080, ContainerPort: 80, Proto: "tcp"},
			{Container: "web", HostIP: "::", HostPort: 8080, ContainerPort: 80, Proto: "tcp"}},
	}
	b, err := Export(c)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	got, _ := json.Marshal(f.Config)
	want, _ := json.Marshal(c)
	if string(got) != string(want) {
		t.Errorf("round trip:\n%s\nwant\n%s", got, want)
	}
	if err := schema(t).Validate(asJSON(t, b)); err != nil {
		t.Errorf("an exported file fails the schema: %v\n%s", err, b)
	}
	if !strings.Contains(string(b), "# Port forwards") {
		t.Errorf("no comments in the export:\n%s", b)
	}
}

func TestParseRefusals(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"version: 1\ndnat:\n  - ext_ip: 1.2.3.4\n    int_ip: 10.0.0.1\n    port: 25\n", "line 5: field port not found"},
		{"version: 2\n", "line 1: version 2 is not supported"},
		{"dnat: []\n", "version 0 is not supported"},
		{"", "empty"},
		{"version: 1\ndnat: [\n", "line 2"},
		{`{"version": 1, "dnat": [{"ext_ip": "1.2.3.4", "int_ip": "10.0.0.1", "ports": "25"}]}`, ""},
	} {
		_, err := Parse([]byte(tc.doc))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v, want it accepted (JSON is YAML)", tc.doc, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: %v, want an error with %q", tc.doc, err, tc.want)
		}
	}
	// The schema refuses what Parse refuses.
	if err := schema(t).Validate(asJSON(t, []byte("version: 1\ndnat:\n  - ext_ip: 1.2.3.4\n    int_ip: 10.0.0.1\n    port: 25\n"))); err == nil {
		t.Error("the schema accepts an unknown key")
	}
}
