package server

import (
	"expvar"

	"tailscale.com/metrics"
)

type serverMetrics struct {
	root     *metrics.Set
	requests *metrics.LabelMap // by outcome
	issued   *expvar.Int
}

func newServerMetrics() *serverMetrics {
	m := &serverMetrics{
		root:     new(metrics.Set),
		requests: &metrics.LabelMap{Label: "outcome"},
		issued:   new(expvar.Int),
	}
	m.root.Set("counter_token_requests", m.requests)
	m.root.Set("counter_tokens_issued", m.issued)
	return m
}
