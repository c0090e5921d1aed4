package nat

import (
	"context"
	"fmt"
	"io"
	"slices"
)

// minEphemeral is how many ports of a kernel ephemeral range of size n
// reservations must leave free for the host's own outgoing connections: a
// quarter of the range, and at least 1,024 (half of a range smaller than
// 2,048).
func minEphemeral(n int) int { return max(n/4, min(1024, n/2)) }

// checkEphemeral looks at the ports of fresh that lie in the kernel's
// ephemeral port range (net.ipv4.ip_local_port_range, which IPv6 uses
// too). The kernel never picks a port some socket is bound to for an
// outgoing connection, whatever the address, so every reserved port in the
// range is one fewer for the host's own connections. A change that would
// leave fewer than minEphemeral of them free (counting the ports held
// already) is refused with ErrConflict; one that only overlaps the range
// is warned about, to the requester and in the log.
func (s *Service) checkEphemeral(ctx context.Context, held map[Endpoint]io.Closer, fresh []Endpoint) error {
	if len(fresh) == 0 {
		return nil
	}
	lo, hi, err := s.sys.EphemeralPorts()
	if err != nil || lo > hi {
		return nil
	}
	in := func(p uint16) bool { return p >= lo && p <= hi }
	type portKey struct {
		proto Proto
		port  uint16
	}
	added := map[Proto][]uint16{}
	seen := map[portKey]bool{}
	for _, ep := range fresh {
		k := portKey{ep.Proto, ep.Addr.Port()}
		if in(k.port) && !seen[k] {
			seen[k] = true
			added[ep.Proto] = append(added[ep.Proto], k.port)
		}
	}
	if len(added) == 0 {
		return nil
	}
	used := map[Proto]int{}
	for ep := range held {
		k := portKey{ep.Proto, ep.Addr.Port()}
		if in(k.port) && !seen[k] {
			seen[k] = true
			used[ep.Proto]++
		}
	}
	size := int(hi) - int(lo) + 1
	for _, proto := range []Proto{ProtoTCP, ProtoUDP} {
		ports := added[proto]
		if len(ports) == 0 {
			continue
		}
		slices.Sort(ports)
		free := size - used[proto] - len(ports)
		what := fmt.Sprintf("%s %s lie in the kernel's ephemeral port range %d-%d (net.ipv4.ip_local_port_range), which the host's own outgoing connections use",
			proto, portList(ports), lo, hi)
		if free < minEphemeral(size) {
			return fmt.Errorf("ports: %s: reserving them would leave %d of its %d ports free, fewer than %d; forward ports outside the range, or move it (%s): %w",
				what, free, size, minEphemeral(size), moveRange(ports, lo, hi), ErrConflict)
		}
		msg := fmt.Sprintf("%s: %d of its %d ports stay free for them", what, free, size)
		s.log.Warn("forwarded ports inside the ephemeral port range", "detail", msg)
		warn(ctx, msg)
	}
	return nil
}

// moveRange suggests a range of over 4,096 ports that holds none of
// ports: the current one cut above or below them, else one above or below
// them.
func moveRange(ports []uint16, lo, hi uint16) string {
	bottom, top := int(ports[0]), int(ports[len(ports)-1])
	span := int(hi) - int(lo)
	var a, b int
	switch {
	case int(hi)-top > 4096:
		a, b = top+1, int(hi)
	case bottom-int(lo) > 4096:
		a, b = int(lo), bottom-1
	case 65535-top > 4096:
		a, b = top+1, min(65535, top+1+span)
	case bottom-1024 > 4096:
		a, b = max(1024, bottom-1-span), bottom-1
	default:
		return "to ports none of them use, in /etc/sysctl.d/"
	}
	return fmt.Sprintf(`for example sysctl -w net.ipv4.ip_local_port_range="%d %d", and the same setting in /etc/sysctl.d/ to keep it`, a, b)
}

// portList writes sorted ports as "25, 465, 1000-1010".
func portList(ports []uint16) string {
	var b []byte
	for i := 0; i < len(ports); {
		j := i
		for j+1 < len(ports) && ports[j+1] == ports[j]+1 {
			j++
		}
		if len(b) > 0 {
			b = append(b, ", "...)
		}
		b = fmt.Appendf(b, "%d", ports[i])
		if j > i {
			b = fmt.Appendf(b, "-%d", ports[j])
		}
		i = j + 1
	}
	if len(ports) == 1 {
		return "port " + string(b)
	}
	return "ports " + string(b)
}
