package tailnet

import (
	"fmt"
	"time"

	"tailscale.com/tsnet"
)

// NodeCloseTimeout bounds CloseNode.
const NodeCloseTimeout = 5 * time.Second

// CloseNode closes a tsnet node, giving up after NodeCloseTimeout. tsnet's
// Close can block forever inside netstack: closing the gVisor stack aborts
// every open TCP endpoint, queueing a RST for each into an outbound queue that
// nothing drains any more, and with enough endpoints (say, thousands in
// TIME_WAIT after heavy traffic) the queue fills. The process is usually on
// its way out when this happens; a bounded wait lets it get there.
func CloseNode(s *tsnet.Server) error {
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(NodeCloseTimeout):
		return fmt.Errorf("tailnet: node close did not finish within %v; abandoning it", NodeCloseTimeout)
	}
}
