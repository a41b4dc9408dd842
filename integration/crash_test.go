package integration

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tsidp/tsidp/internal/crashtest"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore/etcdtest"
	"github.com/tsidp/tsidp/pkg/keys/filestore"
)

// TestRotationCrashSafety kills tsidp with a real SIGKILL at each step of a
// key rotation, for the file store and the etcd store, and restarts it:
//
//   - every algorithm has exactly one active key, in the daemon's view and
//     in the store itself;
//   - every token fetched before any of the crashes still verifies against
//     the JWKS the restarted daemon serves;
//   - the rotation happened entirely (crash after the commit point) or not
//     at all (crash before it);
//   - the file store leaves no temporary file behind.
//
// The daemon is the sandbox (tsidp as a tsnet node on an in-process
// tailnet), built with the tsidp_crashtest tag; the rotation is asked for
// with `tsidp keys rotate` through its admin socket, so the daemon is the
// process that writes and dies. Finally, the production binary, with the
// crash variable set, rotates without dying: the hook is compiled out.
func TestRotationCrashSafety(t *testing.T) {
	bin := crashBinary(t)
	prod := tsidpBinary(t)
	t.Run("file", func(t *testing.T) {
		state := shortTempDir(t)
		tempLeft := func(t *testing.T) {
			// The crash really happened between writing and renaming.
			ents, _ := os.ReadDir(filepath.Join(state, "state", "keys"))
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), "keyset.json.tmp-") {
					return
				}
			}
			t.Errorf("no temporary key file after a crash at %s", crashtest.FileTempSynced)
		}
		testCrashes(t, bin, prod, state, nil, []crashStep{
			{crashtest.BeforeSave, false, nil},
			{crashtest.FileTempSynced, false, tempLeft},
			{crashtest.FileRenamed, true, nil},
			{crashtest.AfterSave, true, nil},
			{crashtest.Installed, true, nil},
		})
		ents, _ := os.ReadDir(filepath.Join(state, "state", "keys"))
		for _, e := range ents {
			if strings.Contains(e.Name(), ".tmp-") {
				t.Errorf("temporary file %s left in the key directory", e.Name())
			}
		}
	})
	t.Run("etcd", func(t *testing.T) {
		c := etcdtest.Start(t, 1)
		dir := shortTempDir(t)
		storeArgs := []string{"--store", c.StoreURL(), "--kek-file", writeKEK(t, dir), "--etcd-prefix", "/crash/"}
		testCrashes(t, bin, prod, dir, storeArgs, []crashStep{
			{crashtest.BeforeSave, false, nil},
			{crashtest.EtcdBeforeTxn, false, nil},
			{crashtest.EtcdAfterTxn, true, nil},
			{crashtest.AfterSave, true, nil},
			{crashtest.Installed, true, nil},
		})
	})
}

type crashStep struct {
	step      string
	committed bool             // the rotation is in the store when the process dies
	after     func(*testing.T) // optional check right after the crash
}

type issued struct{ token, aud string }

func testCrashes(t *testing.T, bin, prod, dir string, storeArgs []string, steps []crashStep) {
	state := filepath.Join(dir, "state")
	cfg := writeFile(t, dir, "tsidp.yaml", perAlgAudiences)
	listen, tagged := freeAddr(t), freeAddr(t)
	iss := "http://" + listen
	hc := httpClient()
	args := append([]string{"sandbox", "--listen", listen, "--listen-tagged", tagged, "--listen-app", freeAddr(t), "--state-dir", state, "--config", cfg}, storeArgs...)
	// The store as the CLI sees it without a daemon: another state dir,
	// so no admin socket is found and the store is read directly.
	direct := append([]string{"--state-dir", filepath.Join(dir, "cli")}, storeArgs...)
	algs := []string{"ES256", "RS256", "EdDSA"}
	var tokens []issued

	// check verifies the invariants after a (re)start, and returns the
	// active kids.
	check := func(what string, listArgs []string) map[string]string {
		t.Helper()
		l := keysList(t, listArgs...)
		act := l.active(t, algs...)
		jwks := fetchJWKS(t, hc, iss)
		for _, tk := range tokens {
			if err := verifyWith(jwks, tk.token); err != nil {
				t.Errorf("%s: a token signed before the crash (%s) does not verify: %v", what, tk.aud, err)
			}
		}
		return act
	}

	start := func(bin string, env ...string) *proc {
		p := startBin(t, bin, env, args...)
		p.waitLine(t, "Press Ctrl-C to stop", 90*time.Second)
		return p
	}

	// Create the key set first, so that starting the daemon writes nothing
	// (the crash hook fires at the first write of its step).
	if _, errOut, code := runTSIDP(t, append([]string{"keys", "init", "--state-dir", state}, storeArgs...)...); code != 0 {
		t.Fatalf("creating the key set: %s", errOut)
	}
	var before map[string]string
	for i, cs := range steps {
		p := start(bin, crashtest.EnvVar+"="+cs.step)
		act := check(fmt.Sprintf("start %d", i), []string{"--state-dir", state})
		if i > 0 {
			// The previous round's crash: rotation all or nothing.
			prev := steps[i-1]
			for _, a := range algs {
				if changed := act[a] != before[a]; changed != prev.committed {
					t.Errorf("after a crash at %s: %s active key changed = %v, want %v", prev.step, a, changed, prev.committed)
				}
			}
		}
		// The store itself, read without the daemon, agrees.
		if got := storedActive(t, state, direct, storeArgs, algs); fmt.Sprint(got) != fmt.Sprint(act) {
			t.Errorf("store holds active keys %v, daemon uses %v", got, act)
		}
		for aud := range audAlg {
			status, ta, _ := postToken(t, hc, iss, url.Values{"audience": {aud}})
			if status != 200 {
				t.Fatalf("token for %s: %d %+v\n%s", aud, status, ta, p.log())
			}
			tokens = append(tokens, issued{ta.AccessToken, aud})
		}
		before = act

		_, errOut, code := runTSIDP(t, "keys", "rotate", "--force", "--state-dir", state)
		ps := p.waitExit(t, 30*time.Second)
		if !killedBy(ps, syscall.SIGKILL) {
			t.Fatalf("crash at %s: process ended with %v, want SIGKILL (rotate: exit %d %s)\n%s", cs.step, ps, code, errOut, p.log())
		}
		if !strings.Contains(p.log(), "crashtest: SIGKILL at "+cs.step) {
			t.Fatalf("process died, but not at %s:\n%s", cs.step, p.log())
		}
		if code == 0 {
			t.Errorf("keys rotate reported success although the daemon died at %s", cs.step)
		}
		if cs.after != nil {
			cs.after(t)
		}
		t.Logf("killed at %s (%d tokens so far)", cs.step, len(tokens))
	}

	// The production binary ignores the crash variable.
	p := start(prod, crashtest.EnvVar+"="+crashtest.BeforeSave)
	act := check("restart after the last crash", []string{"--state-dir", state})
	last := steps[len(steps)-1]
	for _, a := range algs {
		if changed := act[a] != before[a]; changed != last.committed {
			t.Errorf("after a crash at %s: %s active key changed = %v, want %v", last.step, a, changed, last.committed)
		}
	}
	if _, errOut, code := runTSIDP(t, "keys", "rotate", "--force", "--state-dir", state); code != 0 {
		t.Fatalf("rotate with the production binary: %s\n%s", errOut, p.log())
	}
	after := check("after a normal rotation", []string{"--state-dir", state})
	for _, a := range algs {
		if after[a] == act[a] {
			t.Errorf("%s did not rotate", a)
		}
	}
	select {
	case <-p.exited:
		t.Fatalf("the production binary exited:\n%s", p.log())
	default:
	}
}

// storedActive reads the active kids from the store without the daemon:
// keyset.json for the file store, `tsidp keys list` on etcd directly.
func storedActive(t *testing.T, state string, direct, storeArgs, algs []string) map[string]string {
	t.Helper()
	if len(storeArgs) > 0 {
		return keysList(t, direct...).active(t, algs...)
	}
	st, err := filestore.Open(filepath.Join(state, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	set, err := st.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	act := map[string]string{}
	for _, a := range algs {
		alg, _ := keys.ParseAlgorithm(a)
		if k := set.Active(alg); k != nil {
			act[a] = k.ID
		}
	}
	return act
}
