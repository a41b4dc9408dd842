package tailnet

import (
	"errors"
	"net"
	"sync"

	"tailscale.com/net/netaddr"
	"tailscale.com/net/stun"
	"tailscale.com/types/logger"
)

// stunServer answers STUN binding requests on a UDP socket, which is all
// netcheck needs to pick the sandbox DERP region as home. It replaces
// tailscale.com/net/stun/stuntest, which imports testing.
type stunServer struct {
	pc   *net.UDPConn
	logf logger.Logf
	done chan struct{}
	once sync.Once
}

func startSTUN(addr string, logf logger.Logf) (*stunServer, error) {
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenUDP("udp4", ua)
	if err != nil {
		return nil, err
	}
	s := &stunServer{pc: pc, logf: logf, done: make(chan struct{})}
	go s.serve()
	return s, nil
}

// Port returns the UDP port the server listens on.
func (s *stunServer) Port() int { return s.pc.LocalAddr().(*net.UDPAddr).Port }

func (s *stunServer) serve() {
	defer close(s.done)
	var buf [64 << 10]byte
	for {
		n, src, err := s.pc.ReadFromUDPAddrPort(buf[:])
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP-induced errors; keep serving
		}
		pkt := buf[:n]
		if !stun.Is(pkt) {
			continue
		}
		txid, err := stun.ParseBindingRequest(pkt)
		if err != nil {
			continue
		}
		res := stun.Response(txid, netaddr.Unmap(src))
		if _, err := s.pc.WriteToUDPAddrPort(res, src); err != nil {
			s.logf("tailnet: STUN write to %v: %v", src, err)
		}
	}
}

// Close stops the server and waits for its goroutine to exit.
func (s *stunServer) Close() error {
	var err error
	s.once.Do(func() {
		err = s.pc.Close()
		<-s.done
	})
	return err
}
