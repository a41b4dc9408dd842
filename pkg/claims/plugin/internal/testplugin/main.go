// Command testplugin is a claims plugin whose misbehaviour the host's tests
// choose: by flag at start, and by the requested audience per call.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tsidp/tsidp/pkg/claims/sdk"
)

var (
	declare   = flag.String("declare", "groups,who,env,calls,pid,big1,big2,big3,big4,big5,huge", "claims to declare")
	cacheable = flag.Bool("cacheable", false, "declare answers cacheable")
	garbage   = flag.Bool("stderr-garbage", false, "write garbage to stderr at start")
	ignoreHUP = flag.Bool("ignore-hup", false, "ignore SIGHUP, as daemons that reload on it do")
)

type plugin struct {
	calls    atomic.Int64
	failFile string
}

func (p *plugin) Describe() sdk.Description {
	var names []string
	if *declare != "" {
		names = strings.Split(*declare, ",")
	}
	return sdk.Description{Name: "testplugin", Version: "0.0.1", Claims: names, Cacheable: *cacheable}
}

func (p *plugin) Configure(_ context.Context, raw json.RawMessage) error {
	var cfg struct {
		Fail     string `json:"fail"`
		FailFile string `json:"fail_file"`
		// SlowFailFile, if the file exists, makes Configure fail after
		// half a second: a restart that takes a while and then fails.
		SlowFailFile string `json:"slow_fail_file"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	if cfg.Fail != "" {
		return errors.New(cfg.Fail)
	}
	if cfg.SlowFailFile != "" {
		if _, err := os.Stat(cfg.SlowFailFile); err == nil {
			time.Sleep(500 * time.Millisecond)
			return errors.New("slow fail file present")
		}
	}
	p.failFile = cfg.FailFile
	return nil
}

// writeGarbage writes lines that have crashed or confused plugin hosts.
func writeGarbage(w io.Writer) {
	fmt.Fprintln(w, `{"@message":12345}`)
	fmt.Fprintln(w, `{"@message":{"nested":[1,2,3]},"@level":7,"@timestamp":"not a time"}`)
	fmt.Fprintln(w, `{"@level":"error","@message":"structured line","key":"value"}`)
	fmt.Fprintln(w, `{not json at all`)
	fmt.Fprintln(w, "plain text line with \x1b[31mescapes\x1b[0m and \x00 NUL")
	fmt.Fprintln(w, "panic: not really")
	w.Write([]byte{0xff, 0xfe, 0xfd, '\n'})
	fmt.Fprintln(w, strings.Repeat("x", 200<<10))
	w.Write([]byte("no newline at the end"))
}

func (p *plugin) Enrich(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	n := p.calls.Add(1)
	if p.failFile != "" {
		if _, err := os.Stat(p.failFile); err == nil {
			return nil, errors.New("fail file present")
		}
	}
	id := req.Identity
	switch req.Audience {
	case "crash":
		os.Exit(3)
	case "sleep":
		select {
		case <-time.After(5 * time.Second):
		case <-ctx.Done():
			// The propagated gRPC deadline ended the call: answer with
			// the error, or a normal answer could race the host's own
			// deadline and arrive first.
			return nil, ctx.Err()
		}
	case "slow":
		time.Sleep(100 * time.Millisecond)
	case "hang":
		// A deadlocked handler: it ignores the deadline and never
		// returns, while the health service still answers SERVING.
		<-make(chan struct{})
	case "error":
		return nil, errors.New("backend down")
	case "deny":
		return sdk.Deny("not on the list"), nil
	case "stderr":
		// Both the real standard error (fd 2) and os.Stderr, which
		// go-plugin redirects into its stdio stream.
		writeGarbage(os.NewFile(2, "stderr"))
		fmt.Fprintln(os.NewFile(2, "stderr"))
		writeGarbage(os.Stderr)
	case "env":
		var names []string
		for _, kv := range os.Environ() {
			name, _, _ := strings.Cut(kv, "=")
			names = append(names, name)
		}
		sort.Strings(names)
		return sdk.Allow(map[string]any{"env": names}), nil
	case "undeclared":
		return sdk.Allow(map[string]any{"groups": []string{"eng"}, "secret_role": "admin"}), nil
	case "reserved":
		return sdk.Allow(map[string]any{"groups": []string{"eng"}, "sub": "user:0", "email": "root@example.com"}), nil
	case "oversize-claim":
		return sdk.Allow(map[string]any{"groups": []string{"eng"}, "huge": strings.Repeat("h", 9<<10)}), nil
	case "oversize-result":
		m := map[string]any{}
		for i := 1; i <= 5; i++ {
			m[fmt.Sprintf("big%d", i)] = strings.Repeat("b", 7<<10)
		}
		return sdk.Allow(m), nil
	case "ttl":
		return &sdk.Response{Claims: map[string]any{"calls": n}, MaxTTL: time.Minute, CacheTTL: 100 * time.Millisecond}, nil
	}
	return sdk.Allow(map[string]any{
		"groups": []string{"eng", "ops"},
		"who":    fmt.Sprintf("%s|%s|%s|%s|%s", id.Subject, id.LoginName, id.NodeName, req.Audience, strings.Join(req.Scopes, " ")),
		"calls":  n,
		"pid":    os.Getpid(),
	}), nil
}

func main() {
	flag.Parse()
	if *ignoreHUP {
		signal.Ignore(syscall.SIGHUP)
	}
	if m := os.Getenv("TESTPLUGIN_MARKER"); m != "" {
		os.WriteFile(m, []byte(fmt.Sprint(os.Getpid())), 0o600)
	}
	if *garbage {
		writeGarbage(os.Stderr)
		fmt.Fprintln(os.Stderr)
	}
	sdk.Serve(&plugin{})
}
