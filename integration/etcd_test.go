package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tsidp/tsidp/pkg/admin"
	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore/etcdtest"
	"github.com/tsidp/tsidp/pkg/session"
	"github.com/tsidp/tsidp/pkg/tailnet"
	"tailscale.com/tsnet"
)

// Numbers of the replica test: rotation every 4s (a next key is published
// jwks_max_age 1s + clock_skew 1s before it may sign), a 3s election TTL
// (the shortest allowed).
const (
	replicaRotation = 4 * time.Second
	replicaTTL      = 3 * time.Second
)

const replicaConfig = `issuer: http://idp.replicas.test
keys:
  algorithms: [ES256, EdDSA]
  rotation_period: 4s
  jwks_max_age: 1s
  clock_skew: 1s
  etcd:
    prefix: /replicas/
    election_ttl: 3s
tokens:
  default_ttl: 5m
  max_ttl: 10m
audiences:
  - name: api
    allow: ["*"]
  - name: ed
    allow: ["*"]
    algorithm: EdDSA
clients:
  - id: replica-rp
    secret_sha256: ` + replicaSecretSHA256 + `
    redirect_uris: ["http://127.0.0.1:9/callback"]
    id_token_signed_response_alg: ES256
    allow: ["*"]
`

// replicaSecret is the client secret of replica-rp; replicaSecretSHA256
// its hash, as the configuration holds it.
const (
	replicaSecret       = "replica-rp-secret"
	replicaSecretSHA256 = "579c628500c0f6062dbb13168d61b320d120d981a5a385244056fc3a7ac45a65"
)

// replica is one `tsidp serve --backend tsnet` process sharing etcd.
type replica struct {
	name    string
	dir     string
	metrics string
	p       *proc
	admin   *admin.Client
	base    string // http://<tailnet IP>
	dead    bool
}

func (r *replica) version(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := r.admin.Status(ctx)
	if err != nil {
		return 0, err
	}
	return st.Keys.Version, nil
}

// metric returns the value of a Prometheus metric without labels.
func (r *replica) metric(t *testing.T, name string) int64 {
	t.Helper()
	res, err := httpClient().Get("http://" + r.metrics + "/metrics")
	if err != nil {
		t.Fatalf("%s metrics: %v", r.name, err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("%s: %q", name, sc.Text())
			}
			return n
		}
	}
	t.Fatalf("%s: no metric %s", r.name, name)
	return 0
}

type readiness struct {
	code   int
	Status string `json:"status"`
	Checks []struct {
		Name   string `json:"name"`
		Status string `json:"status"` // ok, degraded or failing
		Reason string `json:"reason"`
	} `json:"checks"`
}

func (r *replica) readyz(t *testing.T, hc *http.Client) readiness {
	t.Helper()
	res, err := hc.Get(r.base + "/readyz")
	if err != nil {
		t.Fatalf("%s /readyz: %v", r.name, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var rd readiness
	if err := json.Unmarshal(b, &rd); err != nil {
		t.Fatalf("%s /readyz: %v: %s", r.name, err, b)
	}
	rd.code = res.StatusCode
	return rd
}

// TestReplicasOnEtcd runs three tsidp replicas (separate processes, tsnet
// nodes of one test tailnet) on a real three-member etcd cluster:
//
//   - a token from any replica verifies with the JWKS of every replica;
//   - exactly one replica leads; scheduled rotations reach every replica's
//     signer and JWKS within a second;
//   - SIGKILL of the leading replica: another leads within the election
//     TTL and rotates on schedule;
//   - SIGKILL of one etcd member (the raft leader): service continues, and
//     so does rotation;
//   - every etcd member killed: tokens are still issued with the current
//     keys, /readyz answers 200 "degraded" naming the store, metrics say
//     unhealthy, and no replica rotates or loses a key;
//   - etcd back: readiness recovers, rotation resumes and every replica
//     catches up to the same key set.
func TestReplicasOnEtcd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cluster := etcdtest.Start(t, 3)
	control, err := tailnet.StartControl(tailnet.ControlConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { control.Close() })

	dir := shortTempDir(t)
	kek := writeKEK(t, dir)
	cfg := writeFile(t, dir, "tsidp.yaml", replicaConfig)
	reps := make([]*replica, 3)
	for i := range reps {
		r := &replica{name: fmt.Sprintf("idp-%d", i), dir: filepath.Join(dir, fmt.Sprintf("r%d", i)), metrics: freeAddr(t)}
		r.admin = admin.NewClient(filepath.Join(r.dir, "admin.sock"))
		r.p = startBin(t, tsidpBinary(t), nil, "serve", "--backend", "tsnet", "--control-url", control.URL(),
			"--hostname", r.name, "--state-dir", r.dir, "--config", cfg, "--metrics-listen", r.metrics,
			"--store", cluster.StoreURL(), "--kek-file", kek)
		reps[i] = r
	}
	client, err := control.StartNode(ctx, tailnet.NodeConfig{Hostname: "client"})
	if err != nil {
		t.Fatal(err)
	}
	hc := client.HTTPClient()
	hc.Timeout = 10 * time.Second
	findReplicas(ctx, t, client, hc, reps)
	logs := func() string {
		var b strings.Builder
		for _, r := range reps {
			fmt.Fprintf(&b, "--- %s:\n%s\n", r.name, r.p.log())
		}
		return b.String()
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replica logs:\n%s\netcd logs:\n%s", logs(), cluster.Logs())
		}
	})
	live := func() []*replica {
		var out []*replica
		for _, r := range reps {
			if !r.dead {
				out = append(out, r)
			}
		}
		return out
	}
	var tokens []issued
	getTokens := func(what string) {
		t.Helper()
		for _, r := range live() {
			for _, aud := range []string{"api", "ed"} {
				status, ta, _ := postToken(t, hc, r.base, url.Values{"audience": {aud}})
				if status != 200 {
					t.Fatalf("%s: token from %s: %d %+v", what, r.name, status, ta)
				}
				tokens = append(tokens, issued{ta.AccessToken, aud})
			}
		}
	}
	// verifyAll checks every token so far against every live replica's JWKS.
	verifyAll := func(what string) {
		t.Helper()
		for _, r := range live() {
			jwks := fetchJWKS(t, hc, r.base)
			for i, tk := range tokens {
				if err := verifyWith(jwks, tk.token); err != nil {
					t.Errorf("%s: token #%d (%s) does not verify with %s's JWKS: %v", what, i, tk.aud, r.name, err)
				}
			}
		}
	}
	leaders := func() []*replica {
		var out []*replica
		for _, r := range live() {
			if r.metric(t, "tsidp_store_leader") == 1 {
				out = append(out, r)
			}
		}
		return out
	}
	waitLeader := func(bound time.Duration) (*replica, time.Duration) {
		t.Helper()
		start := time.Now()
		for time.Since(start) < bound {
			if ls := leaders(); len(ls) == 1 {
				return ls[0], time.Since(start)
			} else if len(ls) > 1 {
				t.Fatalf("%d leaders", len(ls))
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no single leader within %v", bound)
		return nil, 0
	}

	// Tokens from each replica verify with each replica's JWKS.
	getTokens("start")
	verifyAll("start")
	loginAcrossReplicas(t, hc, reps)
	leader, _ := waitLeader(15 * time.Second)
	t.Logf("leader: %s", leader.name)

	// Scheduled rotations reach every replica within a second.
	var worst time.Duration
	for range 3 {
		d := measurePropagation(ctx, t, live(), 3*replicaRotation)
		worst = max(worst, d)
	}
	t.Logf("FIGURE rotation propagation to all 3 replicas: worst of 3 rotations %v", worst)
	if worst > time.Second {
		t.Errorf("a rotation took %v to reach every replica; want within 1s", worst)
	}
	getTokens("after rotations")
	verifyAll("after rotations")

	// Kill the leading replica.
	v0 := maxVersion(ctx, t, live())
	leader.p.cmd.Process.Kill()
	leader.p.waitExit(t, 10*time.Second)
	killed := time.Now()
	leader.dead = true
	next, d := waitLeader(replicaTTL + 3*time.Second)
	t.Logf("FIGURE leader failover after SIGKILL of %s: %s leads after %v (election TTL %v)", leader.name, next.name, d, replicaTTL)
	if d > replicaTTL {
		t.Errorf("failover took %v, longer than election_ttl %v", d, replicaTTL)
	}
	rot := waitVersionAbove(ctx, t, live(), v0, replicaTTL+replicaRotation+5*time.Second)
	t.Logf("first scheduled rotation by the new leader %v after the kill", rot.Sub(killed).Round(time.Millisecond))
	getTokens("after leader kill")
	verifyAll("after leader kill")

	// Kill one etcd member: the raft leader.
	m := etcdLeader(ctx, t, cluster)
	m.Kill()
	t.Logf("killed etcd member %s (raft leader)", m.Name)
	v1 := maxVersion(ctx, t, live())
	waitVersionAbove(ctx, t, live(), v1, 2*replicaRotation+5*time.Second)
	getTokens("one etcd member down")
	verifyAll("one etcd member down")
	waitFor(t, "readiness with one etcd member down", 10*time.Second, func() bool {
		for _, r := range live() {
			if rd := r.readyz(t, hc); rd.code != 200 || rd.Status != "ready" {
				return false
			}
		}
		return true
	})

	// Stop etcd entirely.
	cluster.Kill()
	stopped := time.Now()
	for _, r := range live() {
		waitFor(t, r.name+" to report the store degraded", 10*time.Second, func() bool {
			rd := r.readyz(t, hc)
			if rd.code != 200 {
				t.Fatalf("%s /readyz with etcd down: %d %+v; want 200 (degraded)", r.name, rd.code, rd)
			}
			for _, c := range rd.Checks {
				if c.Name == "store" && c.Status == "degraded" && rd.Status == "degraded" {
					return true
				}
			}
			return false
		})
		// /readyz gives a fixed reason; the admin status has the detail.
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := r.admin.Status(sctx)
		cancel()
		if err != nil || !strings.Contains(st.Store, "unreachable") {
			t.Errorf("%s: admin status with etcd down: store %q, %v", r.name, st.Store, err)
		}
		if r.metric(t, "tsidp_store_healthy") != 0 {
			t.Errorf("%s: tsidp_store_healthy is not 0 with etcd down", r.name)
		}
	}
	before := map[string]string{}
	for _, r := range live() {
		before[r.name] = jwksBody(t, hc, r.base)
	}
	vDown := versions(ctx, t, live())
	n := len(tokens)
	getTokens("etcd down")
	// Wait out more than a rotation period and the election TTL.
	time.Sleep(replicaRotation + replicaTTL + time.Second)
	getTokens("etcd down, after a rotation period")
	for _, r := range live() {
		if v, _ := r.version(ctx); v != vDown[r.name] {
			t.Errorf("%s: key set version %d → %d with etcd down", r.name, vDown[r.name], v)
		}
		if after := jwksBody(t, hc, r.base); after != before[r.name] {
			t.Errorf("%s: JWKS changed with etcd down", r.name)
		}
		if r.metric(t, "tsidp_store_leader") != 0 {
			t.Errorf("%s still leads %v after etcd stopped (TTL %v)", r.name, time.Since(stopped).Round(time.Millisecond), replicaTTL)
		}
		if r.metric(t, "tsidp_store_unreachable_seconds") < 1 {
			t.Errorf("%s: tsidp_store_unreachable_seconds < 1 after %v", r.name, time.Since(stopped))
		}
	}
	// Tokens issued while etcd was down are signed with the keys the
	// replicas had, and verify with every replica's JWKS.
	verifyAll("etcd down")
	t.Logf("%d tokens issued with etcd down", len(tokens)-n)

	// etcd comes back.
	cluster.Restart()
	if err := cluster.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	for _, r := range live() {
		// Probes run every second and reconnects back off at most 2s.
		waitFor(t, r.name+" ready again", 6*time.Second, func() bool {
			rd := r.readyz(t, hc)
			return rd.code == 200 && rd.Status == "ready"
		})
	}
	t.Logf("all replicas ready %v after etcd was healthy", time.Since(back).Round(time.Millisecond))
	vBack := maxVersion(ctx, t, live())
	waitVersionAbove(ctx, t, live(), vBack, replicaTTL+replicaRotation+10*time.Second)
	waitFor(t, "replicas to agree", 5*time.Second, func() bool {
		vs := versions(ctx, t, live())
		var first int64 = -1
		for _, v := range vs {
			if first == -1 {
				first = v
			}
			if v != first {
				return false
			}
		}
		return true
	})
	t.Logf("caught up: rotation resumed %v after etcd came back", time.Since(back).Round(time.Millisecond))
	for _, r := range live() {
		if r.metric(t, "tsidp_store_healthy") != 1 {
			t.Errorf("%s: tsidp_store_healthy is not 1 after etcd came back", r.name)
		}
	}
	getTokens("etcd back")
	verifyAll("etcd back")
	for _, r := range live() {
		for _, l := range linesWith(r.p.log(), "ALERT") {
			t.Errorf("%s logged: %s", r.name, l)
		}
	}

	// A leader that stops cleanly (SIGTERM) resigns: the other replica
	// takes over at once, not after the TTL.
	leader, _ = waitLeader(replicaTTL + 3*time.Second)
	start := time.Now()
	leader.p.cmd.Process.Signal(syscall.SIGTERM)
	if ps := leader.p.waitExit(t, 15*time.Second); !ps.Success() {
		t.Errorf("%s after SIGTERM: %v", leader.name, ps)
	}
	stop := time.Since(start)
	leader.dead = true
	next, d = waitLeader(replicaTTL)
	t.Logf("FIGURE clean shutdown of leader %s took %v; %s leads %v after it exited", leader.name, stop.Round(time.Millisecond), next.name, d)
	if !strings.Contains(leader.p.log(), "resigns leadership") {
		t.Errorf("%s did not resign:\n%s", leader.name, leader.p.log())
	}
}

// jwksBody returns the JWKS document served at base, as bytes.
func jwksBody(t *testing.T, hc *http.Client, base string) string {
	t.Helper()
	res, err := hc.Get(base + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// findReplicas waits until every replica is reachable over the tailnet
// and sets its base URL.
func findReplicas(ctx context.Context, t *testing.T, client *tsnet.Server, hc *http.Client, reps []*replica) {
	t.Helper()
	lc, err := client.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		missing := 0
		st, err := lc.Status(ctx)
		for _, r := range reps {
			if r.base != "" {
				continue
			}
			missing++
			if err != nil {
				continue
			}
			for _, p := range st.Peer {
				if p.HostName == r.name && len(p.TailscaleIPs) > 0 {
					u := "http://" + p.TailscaleIPs[0].String()
					if res, err := hc.Get(u + "/healthz"); err == nil {
						res.Body.Close()
						r.base = u
						missing--
					}
				}
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, r := range reps {
				fmt.Fprintf(&b, "--- %s (%s):\n%s\n", r.name, r.base, r.p.log())
			}
			t.Fatalf("replicas not reachable over the tailnet within 90s\n%s", b.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFor polls cond every 50 ms for up to bound.
func waitFor(t *testing.T, what string, bound time.Duration, cond func() bool) {
	t.Helper()
	for start := time.Now(); time.Since(start) < bound; time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out after %v waiting for %s", bound, what)
}

func versions(ctx context.Context, t *testing.T, reps []*replica) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, r := range reps {
		v, err := r.version(ctx)
		if err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
		out[r.name] = v
	}
	return out
}

func maxVersion(ctx context.Context, t *testing.T, reps []*replica) int64 {
	var m int64
	for _, v := range versions(ctx, t, reps) {
		m = max(m, v)
	}
	return m
}

// waitVersionAbove waits until every replica uses a key set newer than v
// and returns when the first one did.
func waitVersionAbove(ctx context.Context, t *testing.T, reps []*replica, v int64, bound time.Duration) time.Time {
	t.Helper()
	var first time.Time
	waitFor(t, fmt.Sprintf("every replica past key set version %d", v), bound, func() bool {
		all := true
		for _, x := range versions(ctx, t, reps) {
			if x > v && first.IsZero() {
				first = time.Now()
			}
			all = all && x > v
		}
		return all
	})
	return first
}

// measurePropagation waits for the next change of the key set and returns
// how long it took from the first replica using it (the leader installs
// what it writes) to the last. Replicas are polled concurrently through
// their admin sockets every 5 ms.
func measurePropagation(ctx context.Context, t *testing.T, reps []*replica, bound time.Duration) time.Duration {
	t.Helper()
	v0 := maxVersion(ctx, t, reps)
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	seen := make([]time.Time, len(reps))
	var wg sync.WaitGroup
	for i, r := range reps {
		wg.Go(func() {
			for ctx.Err() == nil {
				if v, err := r.version(ctx); err == nil && v > v0 {
					seen[i] = time.Now()
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	var first, last time.Time
	for i, s := range seen {
		if s.IsZero() {
			t.Fatalf("%s did not see a key set after version %d within %v", reps[i].name, v0, bound)
		}
		if first.IsZero() || s.Before(first) {
			first = s
		}
		if s.After(last) {
			last = s
		}
	}
	return last.Sub(first)
}

// etcdLeader returns the cluster's raft leader.
func etcdLeader(ctx context.Context, t *testing.T, c *etcdtest.Cluster) *etcdtest.Member {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for _, m := range c.Members {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := cli.Status(sctx, m.ClientURL)
		cancel()
		if err != nil {
			t.Fatalf("etcd status of %s: %v", m.Name, err)
		}
		if st.Leader == st.Header.MemberId {
			return m
		}
	}
	t.Fatal("no etcd member is the raft leader")
	return nil
}

// loginAcrossReplicas: login sessions live in etcd, so a code issued by one
// replica is redeemed at another, and its refresh token works at a third;
// a reused refresh token is refused at any of them.
func loginAcrossReplicas(t *testing.T, hc *http.Client, reps []*replica) {
	t.Helper()
	if clients.SecretHash(replicaSecret) != replicaSecretSHA256 {
		t.Fatal("replicaSecretSHA256 is not the hash of replicaSecret")
	}
	const cb = "http://127.0.0.1:9/callback"
	verifier := session.NewSecret()
	sum := sha256.Sum256([]byte(verifier))
	q := url.Values{"response_type": {"code"}, "client_id": {"replica-rp"}, "redirect_uri": {cb}, "scope": {"openid offline_access"},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"}}
	var code string
	browser := &http.Client{Transport: hc.Transport, Timeout: 10 * time.Second, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(req.URL.String(), cb) {
			code = req.URL.Query().Get("code")
			return http.ErrUseLastResponse
		}
		return nil
	}}
	res, err := browser.Get(reps[0].base + "/authorize?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if code == "" {
		t.Fatalf("%s issued no code: %d", reps[0].name, res.StatusCode)
	}
	post := func(r *replica, form url.Values) (int, map[string]any) {
		req, _ := http.NewRequest("POST", r.base+"/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("replica-rp", replicaSecret)
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var m map[string]any
		json.NewDecoder(res.Body).Decode(&m)
		return res.StatusCode, m
	}
	status, m := post(reps[1], url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {cb}, "code_verifier": {verifier}})
	if status != 200 || m["id_token"] == nil {
		t.Fatalf("code from %s redeemed at %s: %d %v", reps[0].name, reps[1].name, status, m)
	}
	rt1, _ := m["refresh_token"].(string)
	status, m = post(reps[2], url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt1}})
	if status != 200 || m["refresh_token"] == nil {
		t.Fatalf("refresh at %s: %d %v", reps[2].name, status, m)
	}
	if status, m = post(reps[0], url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt1}}); status != 400 || m["error"] != "invalid_grant" {
		t.Errorf("reused refresh token at %s: %d %v", reps[0].name, status, m)
	}
}
