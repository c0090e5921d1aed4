// Command echoserver answers every TCP connection with "NAME SOURCE", the
// source being the client's address as the server sees it. scripts/demo
// runs it inside a namespace to show where traffic arrives from.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
)

func main() {
	name := flag.String("name", "server", "name to answer with")
	flag.Parse()
	if flag.NArg() == 0 {
		log.Fatal("usage: echoserver [-name NAME] ADDR...")
	}
	for _, addr := range flag.Args() {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					log.Fatal(err)
				}
				fmt.Fprintf(c, "%s %s\n", *name, c.RemoteAddr())
				c.Close()
			}
		}()
	}
	select {}
}
