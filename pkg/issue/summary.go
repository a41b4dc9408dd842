package issue

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tsidp/tsidp/pkg/audience"
)

// summary counts decisions between log summaries. One log line per token
// wrote 24 MB in 15 s for one busy caller; the per-token record belongs in
// an audit log, and the info log gets counts.
type summary struct {
	names   []string                 // audiences, in configuration order
	byName  map[string]*atomic.Int64 // built once, read-only after
	refused atomic.Int64
}

func newSummary(reg *audience.Registry) *summary {
	s := &summary{names: reg.Names(), byName: make(map[string]*atomic.Int64, len(reg.Names()))}
	for _, n := range s.names {
		s.byName[n] = new(atomic.Int64)
	}
	return s
}

func (s *summary) issued(aud string) {
	if n := s.byName[aud]; n != nil {
		n.Add(1)
	}
}

// take returns the counts since the last take and resets them.
func (s *summary) take() (total int64, perAudience []string, refused int64) {
	for _, name := range s.names {
		if n := s.byName[name].Swap(0); n > 0 {
			total += n
			perAudience = append(perAudience, fmt.Sprintf("%q %d", name, n))
		}
	}
	return total, perAudience, s.refused.Swap(0)
}

// LogSummaries logs, every interval until ctx is done, how many tokens
// were issued per audience and how many requests were refused, if any
// were; and once more when ctx ends, so that nothing counted goes
// unreported.
func (c *Core) LogSummaries(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := time.Now()
	for {
		var done bool
		select {
		case <-ctx.Done():
			done = true
		case <-t.C:
		}
		now := time.Now()
		c.logSummary(now.Sub(last))
		last = now
		if done {
			return
		}
	}
}

func (c *Core) logSummary(over time.Duration) {
	total, per, refused := c.summaries.take()
	if total == 0 && refused == 0 {
		return
	}
	line := fmt.Sprintf("issue: in the last %v: issued %d tokens", over.Round(time.Second), total)
	if len(per) > 0 {
		line += " (" + strings.Join(per, ", ") + ")"
	}
	c.cfg.Logf("%s, refused %d requests", line, refused)
}
