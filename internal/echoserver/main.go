// Command echoserver answers every TCP connection (and, with -udp, every
// UDP datagram; with -http ADDR, every HTTP request on ADDR) with
// "NAME SOURCE", the source being the client's address as the server sees
// it. scripts/demo runs it inside a namespace, and the
// Docker tests build their container image FROM scratch around it.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
)

func main() {
	name := flag.String("name", "server", "name to answer with")
	udp := flag.Bool("udp", false, "answer UDP datagrams on the same addresses too")
	httpAddr := flag.String("http", "", "also serve HTTP on this address")
	flag.Parse()
	if flag.NArg() == 0 {
		log.Fatal("usage: echoserver [-name NAME] [-udp] [-http ADDR] ADDR...")
	}
	if *httpAddr != "" {
		go func() {
			log.Fatal(http.ListenAndServe(*httpAddr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "%s %s\n", *name, r.RemoteAddr)
			})))
		}()
	}
	for _, addr := range flag.Args() {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatal(err)
		}
		go serveTCP(ln, *name)
		if *udp {
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				log.Fatal(err)
			}
			go serveUDP(pc, *name)
		}
	}
	select {}
}

func serveTCP(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
		c.Close()
	}
}

func serveUDP(pc net.PacketConn, name string) {
	buf := make([]byte, 1500)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			log.Fatal(err)
		}
		pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", name, from)), from)
	}
}
