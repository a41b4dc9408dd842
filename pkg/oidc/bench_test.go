package oidc_test

import (
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// fsyncRate measures how many one-at-a-time 4 KiB write+fsync this disk
// does per second, in dir, for about d: the rate a store without group
// commit could not exceed.
func fsyncRate(b *testing.B, dir string, d time.Duration) float64 {
	b.Helper()
	f, err := os.Create(filepath.Join(dir, "fsync-probe"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		if _, err := f.Write(buf); err != nil { // appended, as a log or dd oflag=dsync writes
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// runDurable runs op from 32 goroutines for b.N operations in all, and
// reports operations per second, the p99 latency and the ratio to the
// disk's one-at-a-time write+fsync rate measured first, in the same run.
// Every op makes one durable store write before it answers.
func runDurable(b *testing.B, setup func() func() bool) {
	dir := b.TempDir()
	base := fsyncRate(b, dir, time.Second)
	const callers = 32
	var mu sync.Mutex
	var lat []time.Duration
	ops := make(chan struct{}, b.N)
	for range b.N {
		ops <- struct{}{}
	}
	close(ops)
	workers := make([]func() bool, callers)
	for i := range workers {
		workers[i] = setup()
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for _, op := range workers {
		wg.Go(func() {
			var mine []time.Duration
			for range ops {
				t0 := time.Now()
				if !op() {
					b.Error("operation failed")
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	rate := float64(len(lat)) / elapsed.Seconds()
	b.ReportMetric(rate, "ops/s")
	b.ReportMetric(base, "fsync/s")
	b.ReportMetric(rate/base, "x-fsync")
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
}

// BenchmarkRefresh: refreshes at 32 concurrent callers, each answer's
// rotation durable in the embedded store before it is sent (bbolt's
// group commit shares fsyncs among concurrent refreshes).
func BenchmarkRefresh(b *testing.B) {
	e := newEnv(b)
	runDurable(b, func() func() bool {
		rt := e.loginTo("es-app", laptopIP, "openid offline_access")["refresh_token"].(string)
		return func() bool {
			code, m, _ := e.token(otherIP, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, "es-app", secret)
			if code != 200 {
				return false
			}
			rt = m["refresh_token"].(string)
			return true
		}
	})
}

// BenchmarkCodeExchange: /authorize and the code exchange at 32
// concurrent callers: three durable writes per login (the code, its
// redemption, the session).
func BenchmarkCodeExchange(b *testing.B) {
	e := newEnv(b)
	runDurable(b, func() func() bool {
		return func() bool {
			v, ch := pkce()
			rec := e.authorize(laptopIP, authz{client: "es-app", redirect: appCB, scope: "openid offline_access", challenge: ch, method: "S256"})
			u, err := url.Parse(rec.Header().Get("Location"))
			if err != nil || u.Query().Get("code") == "" {
				return false
			}
			code, _, _ := e.token(laptopIP, url.Values{"grant_type": {"authorization_code"}, "code": {u.Query().Get("code")}, "redirect_uri": {appCB}, "code_verifier": {v}}, "es-app", secret)
			return code == 200
		}
	})
}
