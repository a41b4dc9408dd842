// Command groups-file is a tsidp claims plugin that sets the "groups" claim
// from a YAML or JSON file mapping groups to login globs ("*@example.com"),
// people ("user:alice@example.com"), tags ("tag:ci") and nodes
// ("node:build-1" by host name, "node:build-1.example.ts.net" by full
// MagicDNS name). Nodes shared in from other tailnets never match tag: or
// node: members; their people match login members. It reloads the file
// when it changes; a file that no longer parses is logged and the previous
// version kept.
//
// Replace the file atomically (write a temporary file in the same
// directory, then rename it over the old one), as configuration management
// tools do. A file rewritten in place can be read half-written, and a
// truncated groups file may still parse — "dev*@example.com" cut to "dev*"
// matches far more people. The plugin takes in a changed file only once two
// reads 250ms apart give the same content, size and modification time, and
// otherwise keeps the previous groups and tries again; that covers writers
// that pause briefly, not arbitrarily long.
//
// Plugin configuration:
//
//	config:
//	  file: /etc/tsidp/groups.yaml  # required
//	  poll_interval: 5s             # stat fallback to file events; default 5s
//	  cache_ttl: 10s                # how long tsidp may cache an answer; default 10s
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/tsidp/tsidp/pkg/claims/sdk"
)

var version = "1.0.0"

func main() { sdk.Serve(&groupsPlugin{}) }

type config struct {
	File         string   `json:"file"`
	PollInterval duration `json:"poll_interval"`
	CacheTTL     duration `json:"cache_ttl"`
}

// duration reads "5s"-style JSON strings.
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"5s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

type groupsPlugin struct {
	cfg   config
	table atomic.Pointer[Table]
	raw   []byte // content of the loaded file; used by the watcher only
}

func (p *groupsPlugin) Describe() sdk.Description {
	return sdk.Description{Name: "groups-file", Version: version, Claims: []string{"groups"}, Cacheable: true}
}

func (p *groupsPlugin) Configure(_ context.Context, raw json.RawMessage) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p.cfg); err != nil {
		return fmt.Errorf("groups-file: config: %w", err)
	}
	if p.cfg.File == "" {
		return errors.New("groups-file: config: file is required")
	}
	if p.cfg.PollInterval <= 0 {
		p.cfg.PollInterval = duration(5 * time.Second)
	}
	if p.cfg.CacheTTL <= 0 {
		p.cfg.CacheTTL = duration(10 * time.Second)
	}
	// The first load must succeed: starting with no groups would quietly
	// take access away from everyone.
	for attempt := 1; ; attempt++ {
		_, err := p.reload()
		if err == nil {
			break
		}
		if !errors.Is(err, errUnsettled) || attempt == maxSettleAttempts {
			return fmt.Errorf("groups-file: %w", err)
		}
	}
	// Watch before returning, so that no change after Configure is missed.
	go p.watch(p.watchEvents())
	return nil
}

// watchEvents starts watching the file's directory, which also catches
// atomic renames and Kubernetes ConfigMap symlink swaps. It returns nil if
// file events are unavailable.
func (p *groupsPlugin) watchEvents() <-chan fsnotify.Event {
	log := sdk.Logger()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Warn("file events unavailable, polling only", "error", err)
		return nil
	}
	if err := w.Add(filepath.Dir(p.cfg.File)); err != nil {
		log.Warn("file events unavailable, polling only", "error", err)
		w.Close()
		return nil
	}
	go func() {
		for err := range w.Errors {
			log.Warn("file events", "error", err)
		}
	}()
	return w.Events
}

// settleDelay is how long a changed file must stay the same before it is
// loaded. It is longer than the event debounce, so that a writer pausing
// between two writes for longer than the debounce is not loaded half-way.
// (A variable for tests only.)
var settleDelay = 250 * time.Millisecond

// maxSettleAttempts bounds the attempts at the first load of a file that
// keeps changing.
const maxSettleAttempts = 8

// errUnsettled reports a file that changed while it was being read.
var errUnsettled = errors.New("file is being written")

// readOnce reads the file and its size and modification time.
func readOnce(name string) ([]byte, os.FileInfo, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	return data, fi, nil
}

// reload reads the file and swaps in its table if the content changed and
// has settled: a second read settleDelay later must find the same bytes,
// size and modification time. A non-atomic writer caught between two
// writes leaves a truncated file that may well parse.
func (p *groupsPlugin) reload() (changed bool, err error) {
	data, fi, err := readOnce(p.cfg.File)
	if err != nil {
		return false, err
	}
	if p.table.Load() != nil && bytes.Equal(data, p.raw) {
		return false, nil
	}
	time.Sleep(settleDelay)
	again, fi2, err := readOnce(p.cfg.File)
	if err != nil {
		return false, err
	}
	if !bytes.Equal(data, again) || fi.Size() != int64(len(data)) || fi2.Size() != fi.Size() || !fi2.ModTime().Equal(fi.ModTime()) {
		return false, fmt.Errorf("%s: %w", p.cfg.File, errUnsettled)
	}
	t, err := Parse(data)
	if err != nil {
		return false, fmt.Errorf("%s: %w", p.cfg.File, err)
	}
	p.raw = data
	p.table.Store(t)
	return true, nil
}

// watch reloads on file events and, as a fallback for file systems without
// them, on a poll.
func (p *groupsPlugin) watch(events <-chan fsnotify.Event) {
	log := sdk.Logger()
	poll := time.NewTicker(time.Duration(p.cfg.PollInterval))
	defer poll.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-events:
			// Editors write in several steps; wait for them to finish.
			debounce = time.After(50 * time.Millisecond)
			continue
		case <-debounce:
		case <-poll.C:
		}
		changed, err := p.reload()
		switch {
		case errors.Is(err, errUnsettled):
			// Keep the previous groups and look again once it settles.
			log.Info("file changed while reading it; trying again", "file", p.cfg.File)
			debounce = time.After(settleDelay)
		case err != nil:
			log.Error("keeping the previous groups", "error", err)
		case changed:
			log.Info("reloaded groups", "file", p.cfg.File)
		}
	}
}

func (p *groupsPlugin) Enrich(_ context.Context, req *sdk.Request) (*sdk.Response, error) {
	id := req.Identity
	groups := p.table.Load().Groups(&Caller{Login: id.LoginName, NodeName: id.NodeName, Tags: id.Tags, Tagged: id.Tagged, Sharee: id.Sharee})
	res := &sdk.Response{CacheTTL: time.Duration(p.cfg.CacheTTL)}
	if len(groups) > 0 {
		res.Claims = map[string]any{"groups": groups}
	}
	return res, nil
}
