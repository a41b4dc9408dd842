package boltstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/session"
)

// BenchmarkDurableWrites: rotations of refresh families (UpdateFamily,
// durable when it returns) by 1 and by 32 concurrent callers, beside the
// disk's one-at-a-time append+fsync rate measured in the same run. With
// group commit, 32 callers share each fsync.
func BenchmarkDurableWrites(b *testing.B) {
	dir := b.TempDir()
	f, err := os.Create(filepath.Join(dir, "probe"))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, start := 0, time.Now()
	for time.Since(start) < time.Second {
		f.Write(buf)
		f.Sync()
		n++
	}
	f.Close()
	fsyncs := float64(n) / time.Since(start).Seconds()

	for _, callers := range []int{1, 32} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			st, err := Config{Path: filepath.Join(b.TempDir(), "s.db")}.Open()
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			ctx := context.Background()
			now := time.Now()
			fams := make([]*session.Family, callers)
			for i := range fams {
				fams[i] = &session.Family{ID: fmt.Sprintf("f%d", i), ClientID: "app", Created: now, LastUsed: now,
					IdleTimeout: time.Hour, Expires: now.Add(24 * time.Hour)}
				if err := st.PutFamily(ctx, fams[i]); err != nil {
					b.Fatal(err)
				}
			}
			per := b.N / callers
			b.ResetTimer()
			t0 := time.Now()
			var wg sync.WaitGroup
			for _, fam := range fams {
				wg.Go(func() {
					for range per {
						next := *fam
						next.Generation++
						if err := st.UpdateFamily(ctx, &next, fam.Generation); err != nil {
							b.Error(err)
							return
						}
						*fam = next
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			rate := float64(per*callers) / time.Since(t0).Seconds()
			b.ReportMetric(rate, "writes/s")
			b.ReportMetric(fsyncs, "fsync/s")
			b.ReportMetric(rate/fsyncs, "x-fsync")
		})
	}
}
