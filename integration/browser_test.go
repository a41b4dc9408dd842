package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// newBrowser starts a real headless Chromium (Debian's chromium) driven
// over the DevTools protocol, with a fresh profile, and returns its
// context; it stops with the test. A missing chromium fails the test.
//
// The flags keep Chromium off the network this machine does not have
// (background updates, sync, component downloads) and let it run as root
// in a container (--no-sandbox).
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (apt-get install chromium; scripts/test.sh does): %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first action starts the browser, which then lives as long as
	// that action's context: ctx itself, not one with a deadline.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// screenshot saves the browser's page as a PNG under the test's artifact
// directory (TSIDP_ARTIFACTS, default the temp dir) and logs the path.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	dir := os.Getenv("TSIDP_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	t.Logf("screenshot: %s", p)
}

// browse navigates the browser to u, waits until the element with id wait
// is visible, and returns the text of the elements with ids and where the
// browser ended up.
func browse(ctx context.Context, u, wait string, ids ...string) (texts map[string]string, where string, err error) {
	if err := chromedp.Do(ctx, chromedp.Navigate(u), chromedp.WaitVisible(chromedp.ID(wait))); err != nil {
		return nil, "", err
	}
	texts = map[string]string{}
	for _, id := range ids {
		if texts[id], err = chromedp.Run(ctx, chromedp.Text(chromedp.ID(id))); err != nil {
			return nil, "", err
		}
	}
	where, err = chromedp.Run(ctx, chromedp.Location())
	return texts, where, err
}
