// Package config reads and writes natmap's configuration file: a whole
// host's NAT (DNAT, SNAT, hairpin, policy routes, Docker mappings) as one
// YAML document (JSON is accepted too), for export, diff and apply. The
// daemon does the applying; this package knows the file: its format, its
// comments, and the line each entry is on.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/lab-ops/natmap/nat"
)

// File is a parsed configuration file.
type File struct {
	// Config is the configuration.
	Config nat.Config
	// lines holds the line of each entry, by section.
	lines map[string][]int
}

// Line is the line of an entry of a section (a Problem's place), or 0.
func (f *File) Line(section string, index int) int {
	if ls := f.lines[section]; index >= 0 && index < len(ls) {
		return ls[index]
	}
	return f.lines["version"][0]
}

// Parse reads a configuration. Unknown keys, a missing or wrong version
// and YAML errors are refused with their line.
func Parse(data []byte) (*File, error) {
	f := &File{lines: map[string][]int{"version": {0}}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f.Config); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file is empty (want at least version: 1)")
		}
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 1 && doc.Content[0].Kind == yaml.MappingNode {
		m := doc.Content[0]
		for i := 0; i+1 < len(m.Content); i += 2 {
			key, val := m.Content[i], m.Content[i+1]
			if key.Value == "version" {
				f.lines["version"] = []int{key.Line}
			}
			if val.Kind == yaml.SequenceNode {
				for _, item := range val.Content {
					f.lines[key.Value] = append(f.lines[key.Value], item.Line)
				}
			}
		}
	}
	if f.Config.Version != nat.ConfigVersion {
		return nil, fmt.Errorf("line %d: version %d is not supported (want version: %d)", f.lines["version"][0], f.Config.Version, nat.ConfigVersion)
	}
	return f, nil
}

// Problems describes the problems of a refused apply, each with the line
// of its entry: "natmap.yaml:12: dnat[1]: ...".
func (f *File) Problems(name string, problems []nat.Problem) string {
	var b strings.Builder
	for _, p := range problems {
		fmt.Fprintf(&b, "%s:%d: %s\n", name, f.Line(p.Section, p.Index), p)
	}
	return b.String()
}

// comments head each section of an exported file.
var comments = map[string]string{
	"version": `natmap configuration: the whole of this host's NAT, as natmap applies it.
  lab-ops natmap diff -f FILE          what applying would add, remove and keep
  lab-ops natmap apply -f FILE         add what is missing (one change, or nothing)
  lab-ops natmap apply -f FILE --prune also remove what the file does not name
Format: docs/config.md; JSON Schema: docs/natmap.schema.json.`,
	"forwarding": "IP forwarding natmap turns on at every start (it never turns it off).",
	"dnat": `Port forwards: external address and ports to an internal host.
ports: 25,465 (lists), 8000-8100 (ranges), 2222:22 (external 2222 to internal 22).
proto: tcp (default) or udp. ext_if: only traffic arriving on that interface.`,
	"snat":          "Source rewriting: traffic from int_ip (an address or CIDR) leaving by ext_if gets source ext_ip, or without ext_ip the address ext_if has at the time (masquerade).",
	"hairpin":       "Internal hosts reach the forward through the external address; lan_cidr defaults to int_ip's network.",
	"policy_routes": "Traffic from src_ip uses table, whose default route is via (keeps client addresses end to end).",
	"docker": `Docker mappings: host_port to a container's container_port (default: the same),
following the container by name; target_ip maps to a local service instead.`,
}

// Export writes c as a commented YAML document.
func Export(c nat.Config) ([]byte, error) {
	var doc yaml.Node
	if err := doc.Encode(c); err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		key, val := doc.Content[i], doc.Content[i+1]
		if text, ok := comments[key.Value]; ok {
			key.HeadComment = text
		}
		if val.Kind == yaml.SequenceNode && len(val.Content) == 0 {
			val.Style = yaml.FlowStyle
		}
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}
