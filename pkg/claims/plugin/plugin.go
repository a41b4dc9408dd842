package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/claims/claimsv1"
	"github.com/tsidp/tsidp/pkg/identity"
)

var (
	// ErrUnavailable is wrapped by the error Enrich returns when a plugin
	// with on_error "deny" (or "stale" without a usable answer) cannot
	// answer. tsidp refuses the token (HTTP 503).
	ErrUnavailable = errors.New("plugin unavailable")
	// ErrChecksum is wrapped when a plugin file does not match its
	// configured sha256.
	ErrChecksum = errors.New("checksum mismatch")
)

// State is where a plugin is in its life cycle.
type State string

const (
	StateStarting   State = "starting"
	StateServing    State = "serving"
	StateRestarting State = "restarting"
	StateStopped    State = "stopped"
)

// Health is a plugin's state for /readyz and the admin API.
type Health struct {
	// Name is the configured name.
	Name  string `json:"name"`
	State State  `json:"state"`
	// Plugin and Version are what the plugin reported about itself.
	Plugin  string `json:"plugin,omitempty"`
	Version string `json:"version,omitempty"`
	// PID of the current process; 0 when none or when built in.
	PID int `json:"pid,omitempty"`
	// Restarts counts replacements of crashed or hung instances.
	Restarts int `json:"restarts"`
	// LastError is why the plugin last failed, if ever.
	LastError string `json:"last_error,omitempty"`
	// Since is when State last changed.
	Since   time.Time `json:"since"`
	OnError OnError   `json:"on_error"`
}

// maxReasonBytes bounds a plugin's deny reason, which callers see.
const maxReasonBytes = 256

// maxRefusedLogged bounds how many refused claims one log line names.
const maxRefusedLogged = 4

// stableAfter is how long an instance must live for its restart to count
// as a fresh start rather than part of a crash loop.
const stableAfter = 10 * time.Second

// hangLimit is how many calls in a row may time out, with no answer in
// between, before the instance is replaced even though its health service
// answers: its Enrich handlers are deadlocked or ignore the deadline.
const hangLimit = 3

// exitPoll is how often the supervisor checks whether the process exited.
// go-plugin exposes exit only as a flag, and polling it is a mutex read.
const exitPoll = 25 * time.Millisecond

// Plugin is one configured plugin. It implements claims.Enricher: every
// plugin, external or built in, reaches tsidp's request path through it.
// Its answers are cached (for cacheable plugins), concurrent identical
// requests share one call, and failures follow the configured on_error
// policy, so Enrich never waits longer than the plugin's timeout.
type Plugin struct {
	cfg        Config
	opts       *Options
	launcher   launcher
	cache      *cache
	sf         singleflight.Group
	errLog     rateLog
	claimLog   rateLog // refused claims: a plugin bug repeats on every call
	cacheable  atomic.Bool
	supervised atomic.Bool
	kick       chan struct{}
	quit       chan struct{}
	done       chan struct{}
	quitCtx    context.Context
	cancelQuit context.CancelFunc

	mu        sync.Mutex
	inst      *instance
	ready     chan struct{} // closed (and replaced) when a launch ends; see launched
	launching bool
	state     State
	since     time.Time
	lastErr   string
	restarts  int
	failures  int // consecutive failed instances or starts
}

var _ claims.Enricher = (*Plugin)(nil)

func newPlugin(cfg Config, opts *Options, l launcher) *Plugin {
	p := &Plugin{
		cfg:      cfg,
		opts:     opts,
		launcher: l,
		cache:    newCache(opts.CacheSize),
		kick:     make(chan struct{}, 1),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		ready:    make(chan struct{}),
		state:    StateStarting,
		since:    time.Now(),
	}
	p.errLog.logf = opts.Logf
	p.claimLog.logf, p.claimLog.burst = opts.Logf, 5
	p.quitCtx, p.cancelQuit = context.WithCancel(context.Background())
	return p
}

// Name returns the configured name.
func (p *Plugin) Name() string { return p.cfg.Name }

// Config returns the provisioned configuration.
func (p *Plugin) Config() Config { return p.cfg }

// Description returns what the current instance reported about itself.
func (p *Plugin) Description() Description {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inst == nil {
		return Description{}
	}
	return p.inst.desc
}

// Health reports the plugin's state.
func (p *Plugin) Health() Health {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := Health{
		Name:      p.cfg.Name,
		State:     p.state,
		Restarts:  p.restarts,
		LastError: p.lastErr,
		Since:     p.since,
		OnError:   p.cfg.OnError,
	}
	if p.inst != nil {
		h.Plugin, h.Version, h.PID = p.inst.desc.Name, p.inst.desc.Version, p.inst.pid
	}
	return h
}

// Enrich asks the plugin about req and applies the on_error policy when it
// cannot answer: "deny" returns an error wrapping ErrUnavailable, "omit" an
// empty Result, "stale" the last good Result if younger than stale_max.
// The returned Result may be shared with other callers and must not be
// modified.
func (p *Plugin) Enrich(ctx context.Context, req *claims.Request) (*claims.Result, error) {
	key := cacheKey(req)
	if p.cacheable.Load() {
		if e, ok := p.cache.get(key); ok && time.Now().Before(e.fresh) {
			return e.res, nil
		}
		// One call per key at a time; it runs detached from the first
		// caller so that its cancellation does not fail the others.
		ch := p.sf.DoChan(key, func() (any, error) {
			return p.call(context.WithoutCancel(ctx), req, key)
		})
		select {
		case r := <-ch:
			if r.Err == nil {
				return r.Val.(*claims.Result), nil
			}
			return p.onError(ctx, key, r.Err)
		case <-ctx.Done():
			return nil, fmt.Errorf("plugin %s: %w", p.cfg.Name, ctx.Err())
		}
	}
	res, err := p.call(ctx, req, key)
	if err != nil {
		return p.onError(ctx, key, err)
	}
	return res, nil
}

var emptyResult = &claims.Result{}

func (p *Plugin) onError(ctx context.Context, key string, err error) (*claims.Result, error) {
	if ctx.Err() != nil {
		// The caller is gone; no policy applies to nobody.
		return nil, fmt.Errorf("plugin %s: %w", p.cfg.Name, ctx.Err())
	}
	switch p.cfg.OnError {
	case OnErrorOmit:
		p.errLog.log("plugin %s: omitting its claims: %v", p.cfg.Name, err)
		return emptyResult, nil
	case OnErrorStale:
		if e, ok := p.cache.get(key); ok && time.Now().Before(e.staleUntil) {
			p.errLog.log("plugin %s: answering from a stale result: %v", p.cfg.Name, err)
			return e.res, nil
		}
	}
	p.errLog.log("plugin %s: refusing the token: %v", p.cfg.Name, err)
	return nil, fmt.Errorf("plugin %s: %w: %w", p.cfg.Name, ErrUnavailable, err)
}

// call makes one Enrich call within the plugin's timeout and caches its
// answer.
func (p *Plugin) call(parent context.Context, req *claims.Request, key string) (*claims.Result, error) {
	ctx, cancel := context.WithTimeout(parent, p.cfg.Timeout)
	defer cancel()
	inst, err := p.current(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := inst.client.Enrich(ctx, requestToProto(req))
	switch code := status.Code(err); {
	case err == nil:
		inst.timeouts.Store(0)
	case code == codes.DeadlineExceeded && parent.Err() == nil:
		// The plugin's own timeout, not a caller that gave up.
		inst.timeouts.Add(1)
		p.poke() // maybe hung: have the supervisor look now
	case code == codes.Unavailable:
		p.poke() // maybe crashed
	case code != codes.DeadlineExceeded && code != codes.Canceled:
		// An error of the plugin's own: its handlers run.
		inst.timeouts.Store(0)
	}
	if err != nil {
		return nil, fmt.Errorf("enrich: %w", err)
	}
	res, ttl, err := p.result(inst, resp)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var e entry
	if p.cacheable.Load() && ttl > 0 {
		e.fresh = now.Add(ttl)
	}
	if p.cfg.OnError == OnErrorStale {
		e.staleUntil = now.Add(p.cfg.StaleMax)
	}
	if !e.fresh.IsZero() || !e.staleUntil.IsZero() {
		e.res = res
		p.cache.put(key, e)
	}
	return res, nil
}

// current returns the serving instance, waiting for one being started
// (not for one in restart backoff) until ctx ends.
func (p *Plugin) current(ctx context.Context) (*instance, error) {
	for {
		p.mu.Lock()
		inst, launching, ready, state, lastErr := p.inst, p.launching, p.ready, p.state, p.lastErr
		p.mu.Unlock()
		if inst != nil {
			return inst, nil
		}
		if !launching {
			if lastErr != "" {
				return nil, fmt.Errorf("not running (%s): %s", state, lastErr)
			}
			return nil, fmt.Errorf("not running (%s)", state)
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the plugin to start: %w", ctx.Err())
		}
	}
}

// result converts and checks a plugin's answer. Claims the plugin did not
// declare, reserved claims and oversize claims are dropped with a logged
// reason; a result whose claims together exceed claims.MaxExtraBytes is an
// error (and the on_error policy applies).
func (p *Plugin) result(inst *instance, resp *claimsv1.EnrichResponse) (*claims.Result, time.Duration, error) {
	ttl := p.cfg.CacheTTL
	if d := resp.GetCacheTtl().AsDuration(); d > 0 && d < ttl {
		ttl = d
	}
	if resp.GetDeny() {
		reason := strings.ToValidUTF8(resp.GetReason(), "?")
		if len(reason) > maxReasonBytes {
			reason = reason[:maxReasonBytes]
		}
		reason = sanitize(reason)
		if reason == "" {
			reason = "refused by plugin " + p.cfg.Name
		}
		return &claims.Result{Deny: true, Reason: reason}, ttl, nil
	}
	res := &claims.Result{}
	if d := resp.GetMaxTtl().AsDuration(); d > 0 {
		res.MaxTTL = d
	}
	size := 0
	var valid []claims.Claim
	var refused []string
	for _, c := range resp.GetClaims() {
		cl := claims.Claim{Name: c.GetName(), Value: json.RawMessage(c.GetValueJson())}
		if err := cl.Validate(inst.allowed); err != nil {
			refused = append(refused, err.Error())
			continue
		}
		size += len(cl.Name) + len(cl.Value)
		valid = append(valid, cl)
	}
	if len(refused) > 0 {
		// One line per answer, whatever the plugin sent.
		if len(refused) > maxRefusedLogged {
			refused = append(refused[:maxRefusedLogged], fmt.Sprintf("and %d more", len(refused)-maxRefusedLogged))
		}
		p.claimLog.log("plugin %s: refused claim: %s", p.cfg.Name, strings.Join(refused, "; "))
	}
	if size > claims.MaxExtraBytes {
		return nil, 0, fmt.Errorf("result of %d bytes of claims is over the %d-byte limit", size, claims.MaxExtraBytes)
	}
	res.Claims = claims.Merge(nil, valid)
	return res, ttl, nil
}

func (p *Plugin) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// launchedLocked records that a launch ended, with an instance or not,
// and wakes the calls waiting for it in current(): they then use the new
// instance or fail at once with the start error, rather than wait out
// their timeout. p.mu must be held.
func (p *Plugin) launchedLocked() {
	p.launching = false
	close(p.ready)
	p.ready = make(chan struct{})
}

// setInstance makes inst the serving instance.
func (p *Plugin) setInstance(inst *instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inst = inst
	p.state, p.since = StateServing, time.Now()
	p.launchedLocked()
	p.cacheable.Store(inst.desc.Cacheable && p.cfg.CacheTTL > 0)
}

// start launches the first instance.
func (p *Plugin) start(ctx context.Context) error {
	p.mu.Lock()
	p.launching = true
	p.mu.Unlock()
	inst, err := p.launcher.launch(ctx)
	if err != nil {
		p.mu.Lock()
		p.launchedLocked()
		p.lastErr = err.Error()
		p.state, p.since = StateStopped, time.Now()
		p.mu.Unlock()
		return err
	}
	p.setInstance(inst)
	p.opts.Logf("plugin %s: started %s %s (pid %d), claims %v", p.cfg.Name, inst.desc.Name, inst.desc.Version, inst.pid, inst.desc.Claims)
	p.supervised.Store(true)
	go p.supervise()
	return nil
}

// supervise watches the serving instance and replaces it when it exits or
// fails its health check, until stop.
func (p *Plugin) supervise() {
	defer close(p.done)
	exitTick := time.NewTicker(exitPoll)
	defer exitTick.Stop()
	healthTick := time.NewTicker(p.opts.HealthInterval)
	defer healthTick.Stop()
	for {
		p.mu.Lock()
		inst := p.inst
		p.mu.Unlock()
		if inst == nil {
			return // only after stop interrupted a restart
		}
		select {
		case <-p.quit:
			return
		case <-exitTick.C:
			if inst.exited() {
				p.replace(inst, errExited)
			}
		case <-p.kick:
			if err := p.check(inst); err != nil {
				p.replace(inst, err)
			}
		case <-healthTick.C:
			if err := p.check(inst); err != nil {
				p.replace(inst, err)
			}
		}
	}
}

// check reports why inst should be replaced, if it should: its process
// exited, it fails its health check, or its calls keep timing out. The
// health service answers from its own goroutines, so a plugin whose
// Enrich handlers are deadlocked still passes the health check; only its
// calls show it.
func (p *Plugin) check(inst *instance) error {
	if n := inst.timeouts.Load(); n >= hangLimit {
		return fmt.Errorf("%d calls in a row timed out (Enrich hung?) although the health check may pass", n)
	}
	return inst.checkHealth(p.quitCtx, p.opts.HealthTimeout)
}

// replace kills a failed instance and starts another, with exponential,
// jittered backoff between attempts. It returns once an instance serves or
// the plugin is stopped.
func (p *Plugin) replace(old *instance, reason error) {
	if p.quitCtx.Err() != nil {
		return
	}
	p.mu.Lock()
	p.inst = nil
	p.state, p.since = StateRestarting, time.Now()
	p.lastErr = reason.Error()
	if time.Since(old.started) > stableAfter {
		p.failures = 0
	}
	p.failures++
	p.mu.Unlock()
	p.opts.Logf("plugin %s: replacing instance (pid %d): %v", p.cfg.Name, old.pid, reason)
	old.stop(false)

	for {
		p.mu.Lock()
		delay := backoff(p.failures, p.opts.RestartMin, p.opts.RestartMax)
		p.mu.Unlock()
		select {
		case <-time.After(delay):
		case <-p.quit:
			return
		}
		p.mu.Lock()
		p.launching = true
		p.mu.Unlock()
		inst, err := p.launcher.launch(p.quitCtx)
		if err == nil {
			if p.quitCtx.Err() != nil {
				inst.stop(false)
				return
			}
			p.mu.Lock()
			p.restarts++
			p.mu.Unlock()
			p.setInstance(inst)
			p.opts.Logf("plugin %s: restarted (pid %d)", p.cfg.Name, inst.pid)
			return
		}
		p.mu.Lock()
		p.lastErr = err.Error()
		p.launchedLocked()
		p.failures++
		p.mu.Unlock()
		p.opts.Logf("plugin %s: restart failed: %v", p.cfg.Name, err)
	}
}

// stop ends supervision and the serving instance.
func (p *Plugin) stop() {
	select {
	case <-p.quit:
		return
	default:
	}
	close(p.quit)
	p.cancelQuit()
	if p.supervised.Load() {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	}
	p.mu.Lock()
	inst := p.inst
	p.inst = nil
	p.state, p.since = StateStopped, time.Now()
	p.launchedLocked()
	p.mu.Unlock()
	if inst != nil {
		inst.stop(true)
	}
}

// backoff returns the delay before restart attempt n (1-based): min·2^(n-1)
// capped at max, with the upper half jittered so that plugins failing
// together do not restart in lockstep.
func backoff(n int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d/2+1)
}

// rateLog logs at most burst lines (at least one) per second and counts the
// rest, so a failing or misbehaving plugin under load does not flood the log.
type rateLog struct {
	logf  logger.Logf
	burst int
	now   func() time.Time // for tests; nil means time.Now

	mu         sync.Mutex
	window     time.Time // start of the current one-second window
	logged     int       // lines logged in it
	suppressed int       // lines dropped since the last one logged
}

func (r *rateLog) log(format string, args ...any) {
	r.mu.Lock()
	now := time.Now
	if r.now != nil {
		now = r.now
	}
	t := now()
	if t.Sub(r.window) >= time.Second {
		r.window, r.logged = t, 0
	}
	if r.logged >= max(r.burst, 1) {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	r.logged++
	n := r.suppressed
	r.suppressed = 0
	r.mu.Unlock()
	if n > 0 {
		format += fmt.Sprintf(" (and %d similar messages)", n)
	}
	r.logf(format, args...)
}

// requestToProto converts a request to the protocol's shape.
func requestToProto(req *claims.Request) *claimsv1.EnrichRequest {
	out := &claimsv1.EnrichRequest{Audience: req.Audience, Scopes: req.Scopes}
	if id := req.Identity; id != nil {
		out.Identity = identityToProto(id)
	}
	return out
}

func identityToProto(id *identity.Identity) *claimsv1.Identity {
	pid := &claimsv1.Identity{
		Subject:       id.Subject,
		UserId:        id.UserID,
		LoginName:     id.LoginName,
		DisplayName:   id.DisplayName,
		ProfilePicUrl: id.ProfilePicURL,
		NodeName:      id.NodeName,
		NodeId:        id.NodeID,
		Tailnet:       id.Tailnet,
		Tags:          id.Tags,
		Tagged:        id.Tagged,
		Sharee:        id.Sharee,
	}
	for _, a := range id.Addresses {
		pid.Addresses = append(pid.Addresses, a.String())
	}
	if len(id.Caps) > 0 {
		pid.CapsJson, _ = json.Marshal(id.Caps)
	}
	return pid
}
