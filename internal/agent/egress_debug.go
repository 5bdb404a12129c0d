package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/google/nftables"
	"github.com/hashicorp/yamux"

	"github.com/bangerdev/banger/internal/agentapi"
)

// DebugEgress checks the guest side of the gateway on a real guest
// kernel without a daemon that takes egress streams: it programs the
// redirect, serves the listeners, and plays the host in process. Every
// TCP connection is allowed and answered with a short HTTP response,
// every DNS query gets NXDOMAIN, and each stream's EgressOpen line is
// printed to out as JSON. The redirect is removed when ctx ends.
// (`banger-agent egress-debug`, hidden; never run it next to a real
// gateway: it replaces the table.)
func DebugEgress(ctx context.Context, log *slog.Logger, out io.Writer) error {
	a, b := net.Pipe()
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	guest, err := yamux.Server(a, cfg)
	if err != nil {
		return err
	}
	defer guest.Close()
	host, err := yamux.Client(b, cfg)
	if err != nil {
		return err
	}
	defer host.Close()
	var hs hostSessions
	defer hs.add(guest)()
	var mu sync.Mutex
	go func() {
		for {
			s, err := host.Accept()
			if err != nil {
				return
			}
			go debugHostStream(s, out, &mu)
		}
	}()
	if err := applyEgressRules(); err != nil {
		return err
	}
	defer func() {
		if err := deleteEgressRules(); err != nil {
			log.Warn("remove egress redirect", "err", err)
		}
	}()
	if n, err := countEgressRules(); err != nil {
		fmt.Fprintf(out, "{\"nft_error\":%q}\n", err.Error())
	} else {
		fmt.Fprintf(out, "{\"nft_rules\":%d}\n", n)
	}
	return NewEgress(log, hs.open).Listen(ctx)
}

func debugHostStream(s net.Conn, out io.Writer, mu *sync.Mutex) {
	defer s.Close()
	br := bufio.NewReader(s)
	var o agentapi.EgressOpen
	if err := agentapi.ReadEgressLine(br, &o); err != nil {
		return
	}
	line, _ := json.Marshal(o)
	mu.Lock()
	fmt.Fprintf(out, "%s\n", line)
	mu.Unlock()
	switch o.Kind {
	case agentapi.EgressKindTCP:
		agentapi.WriteEgressLine(s, agentapi.EgressReply{Allow: true})
		body := "banger egress debug: " + o.Dst + "\n"
		fmt.Fprintf(s, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	case agentapi.EgressKindDNS:
		q, err := readDNSFrame(br)
		if err != nil {
			return
		}
		if ans := dnsErrorAnswer(q, dnsRcodeNXDomain); ans != nil {
			writeDNSFrame(s, ans)
		}
	}
}

// deleteEgressRules removes EgressTable.
func deleteEgressRules() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Name: EgressTable, Family: nftables.TableFamilyINet})
	return c.Flush()
}

// countEgressRules reads back how many rules the kernel holds in the
// table's output chain.
func countEgressRules() (int, error) {
	c, err := nftables.New()
	if err != nil {
		return 0, err
	}
	t := &nftables.Table{Name: EgressTable, Family: nftables.TableFamilyINet}
	rules, err := c.GetRules(t, &nftables.Chain{Name: "output", Table: t})
	if err != nil {
		return 0, fmt.Errorf("list egress rules: %w", err)
	}
	return len(rules), nil
}
