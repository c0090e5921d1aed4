package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/lab-ops/natmap/nat"
)

// DockerCmd groups the Docker mapping commands.
type DockerCmd struct {
	Add   DockerAddCmd   `cmd:"" help:"Map a host port to a container port, without restarting the container."`
	Rm    DockerRmCmd    `cmd:"" aliases:"remove" help:"Remove mappings: CONTAINER PORT[/PROTO], --name NAME PORT, --id N, or CONTAINER --all."`
	Remap DockerRemapCmd `cmd:"" help:"Move a mapping to another host port, without restarting the container."`
}

// DockerAddCmd adds a mapping.
type DockerAddCmd struct {
	Args []string `arg:"" name:"container-and-mapping" help:"[CONTAINER] MAPPING, MAPPING being [HOST_IP:]HOST_PORT[:[TARGET_IP:]CONTAINER_PORT][/PROTO] (host port 0: pick a free one)."`
	Name string   `help:"Container name (or local service name with a target IP), instead of the first argument."`
}

// Run sends the mapping to the daemon.
func (c *DockerAddCmd) Run(g *Globals, out *output) error {
	container, spec := c.Name, ""
	switch {
	case c.Name != "" && len(c.Args) == 1:
		spec = c.Args[0]
	case c.Name == "" && len(c.Args) == 2:
		container, spec = c.Args[0], c.Args[1]
	default:
		return usageError{"docker add takes CONTAINER MAPPING, or MAPPING --name CONTAINER"}
	}
	req, err := nat.ParseMappingSpec(spec)
	if err != nil {
		return usageError{err.Error()}
	}
	var pm nat.DockerPortMap
	h, err := newClient(g, out).call(http.MethodPost, "/mapping/"+url.PathEscape(container), req, &pm)
	if err != nil {
		return err
	}
	out.done(pm, "mapping %s: %s", addedVerb(h), describeMapping(pm))
	return nil
}

func describeMapping(pm nat.DockerPortMap) string {
	target := pm.Request.ContainerAddr
	if target == "" {
		target = "(not running)"
	}
	return fmt.Sprintf("id %d, %s %s -> %s %s", pm.ID, pm.Request.Proto, pm.Request.HostAddr, pm.ContainerName, target)
}

// DockerRmCmd removes mappings.
type DockerRmCmd struct {
	Args []string `arg:"" optional:"" name:"container-and-port" help:"[CONTAINER] HOST_PORT[/PROTO]."`
	Name string   `help:"Container or local service name, instead of the first argument."`
	ID   int      `name:"id" help:"Remove the mapping with this ID."`
	All  bool     `help:"Remove every mapping of the container."`
	// Not ruleOp: a mapping is removed by rm, never by add --delete.
	IfExists bool `name:"if-exists" help:"No mapping to remove is no error (exit 0, a note on stderr), so a script may remove what may be absent."`
	Check    bool `help:"Remove nothing: exit 0 if there is a mapping to remove, 1 if there is none, 2 if the question is wrong."`
}

// Run asks the daemon to remove.
func (c *DockerRmCmd) Run(g *Globals, out *output) error {
	container, port := c.Name, ""
	var path, what string
	switch {
	case c.ID != 0 && len(c.Args) == 0 && c.Name == "" && !c.All:
		path, what = fmt.Sprintf("/mapping/by-id/%d", c.ID), fmt.Sprintf("mapping %d", c.ID)
	case c.All && len(c.Args)+len(c.Name) > 0 && len(c.Args) <= 1 && c.ID == 0:
		if container == "" {
			container = c.Args[0]
		}
		path, what = "/mapping/"+url.PathEscape(container), "every mapping of "+container
	case !c.All && c.ID == 0 && c.Name != "" && len(c.Args) == 1:
		port = c.Args[0]
	case !c.All && c.ID == 0 && c.Name == "" && len(c.Args) == 2:
		container, port = c.Args[0], c.Args[1]
	default:
		return usageError{"docker rm takes CONTAINER PORT[/PROTO], --name NAME PORT[/PROTO], --id N, or CONTAINER --all"}
	}
	if path == "" {
		num, proto, _ := strings.Cut(port, "/")
		if _, err := strconv.Atoi(num); err != nil {
			return usageError{fmt.Sprintf("port: %q is not a port number", num)}
		}
		path = "/mapping/" + url.PathEscape(container) + "/port/" + num
		if proto != "" {
			path += "?proto=" + url.QueryEscape(proto)
		}
		what = fmt.Sprintf("%s host port %s", container, port)
	}
	switch {
	case c.Check && c.IfExists:
		return usageError{"--check goes alone: not with --if-exists"}
	case c.Check:
		var found []nat.DockerPortMap
		_, err := newClient(g, out).call(http.MethodGet, path, nil, &found)
		var ids []string
		for _, pm := range found {
			ids = append(ids, describeMapping(pm))
		}
		return answer(out, err, found, "present: %s", strings.Join(ids, "; "))
	}
	if _, err := newClient(g, out).call(http.MethodDelete, path, nil, nil); err != nil {
		if c.IfExists && isNotFound(err) {
			fmt.Fprintf(out.stderr, "note: nothing to remove (%s)\n", err)
			out.done(map[string]any{"removed": nil, "absent": what}, "no mapping to remove: %s", what)
			return nil
		}
		return err
	}
	out.done(map[string]string{"removed": what}, "removed %s", what)
	return nil
}

// DockerRemapCmd moves a mapping to another host port.
type DockerRemapCmd struct {
	Container string `arg:"" help:"Container name or ID."`
	Ports     string `arg:"" help:"OLD_PORT:NEW_PORT[/PROTO]."`
}

// Run asks the daemon to remap.
func (c *DockerRemapCmd) Run(g *Globals, out *output) error {
	body, proto, _ := strings.Cut(c.Ports, "/")
	oldS, newS, ok := strings.Cut(body, ":")
	oldP, err1 := strconv.Atoi(oldS)
	newP, err2 := strconv.Atoi(newS)
	if !ok || err1 != nil || err2 != nil {
		return usageError{fmt.Sprintf("ports: %q is not OLD_PORT:NEW_PORT[/PROTO]", c.Ports)}
	}
	req := nat.RemapRequest{HostPort: oldP, NewHostPort: newP, Proto: proto}
	var maps []nat.DockerPortMap
	if _, err := newClient(g, out).call(http.MethodPut, "/remap/"+url.PathEscape(c.Container), req, &maps); err != nil {
		return err
	}
	if out.json {
		out.printJSON(maps)
		return nil
	}
	for _, pm := range maps {
		fmt.Fprintf(out.stdout, "mapping remapped: %s\n", describeMapping(pm))
	}
	return nil
}
