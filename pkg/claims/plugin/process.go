package plugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/tsidp/tsidp/pkg/claims/claimsv1"
)

// maxResponseBytes bounds one message from a plugin; claims themselves are
// bounded much lower (claims.MaxExtraBytes), this only stops a plugin from
// making tsidp buffer megabytes.
const maxResponseBytes = 1 << 20

var errExited = errors.New("plugin process exited")

// processLauncher starts a plugin executable with go-plugin.
type processLauncher struct {
	cfg        *Config
	configJSON []byte
	sum        []byte // decoded cfg.SHA256
	sockets    string // directory for this plugin's socket directories
	opts       *Options
}

// FileSHA256 returns the hex SHA-256 of the file at path, as the sha256
// setting expects it.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkFile verifies that path is an executable regular file with the
// expected checksum, with an error an operator can act on.
func checkFile(path, want string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", path)
	}
	got, err := FileSHA256(path)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%w: %s has sha256 %s, the configuration expects %s; refusing to start it", ErrChecksum, path, got, want)
	}
	return nil
}

func (l *processLauncher) launch(ctx context.Context) (_ *instance, err error) {
	cfg := l.cfg
	// Checked here for a clear message; go-plugin checks again (through
	// SecureConfig) right before it executes the file.
	if err := checkFile(cfg.Path, cfg.SHA256); err != nil {
		return nil, err
	}
	// Each instance gets its own socket directory, removed when it
	// stops: a plugin killed with SIGKILL cannot remove its socket.
	sockDir, err := os.MkdirTemp(l.sockets, "s")
	if err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(sockDir)
		}
	}()

	// exec.Command with an absolute path runs the file itself: no shell,
	// no PATH lookup.
	cmd := exec.Command(cfg.Path, cfg.Args...)
	cmd.Env = []string{goplugin.EnvUnixSocketDir + "=" + sockDir}
	for _, name := range cfg.Env {
		if v, ok := os.LookupEnv(name); ok {
			cmd.Env = append(cmd.Env, name+"="+v)
		}
	}
	setProcAttr(cmd)

	stderr := newLineLogger(cfg.Name, "", l.opts.Logf)
	stdio := newLineLogger(cfg.Name, " (stdio)", l.opts.Logf)
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig: goplugin.HandshakeConfig{
			ProtocolVersion:  claimsv1.ProtocolVersion,
			MagicCookieKey:   claimsv1.MagicCookieKey,
			MagicCookieValue: claimsv1.MagicCookieValue,
		},
		Plugins: goplugin.PluginSet{claimsv1.PluginName: hostPlugin{}},
		Cmd:     cmd,
		// SecureConfig hashes as it reads, so it cannot be reused.
		SecureConfig:     &goplugin.SecureConfig{Checksum: l.sum, Hash: sha256.New()},
		AutoMTLS:         true,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		SkipHostEnv:      true,
		StartTimeout:     l.opts.StartTimeout,
		// go-plugin's stderr parser panics on JSON lines whose
		// "@message" is not a string; at level Off it does not parse,
		// and lineLogger does the job.
		Logger:          hclog.New(&hclog.LoggerOptions{Level: hclog.Off, Output: io.Discard}),
		Stderr:          stderr,
		SyncStderr:      stdio,
		SyncStdout:      stdio,
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes))},
	})

	var killOnce sync.Once
	kill := func() {
		killOnce.Do(func() {
			// The plugin leads its own process group; killing the group
			// also ends anything it started.
			if p := cmd.Process; p != nil && !client.Exited() {
				killGroup(p.Pid)
				p.Kill()
			}
		})
	}
	stop := func(graceful bool) {
		if !graceful {
			kill()
		}
		done := make(chan struct{})
		go func() {
			// Kill asks the plugin to shut down over gRPC and waits up to
			// 2s before killing it. The RPC has no deadline of its own:
			// a stopped process would hang it until killed below.
			client.Kill()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			kill()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				l.opts.Logf("plugin %s: process did not go away after SIGKILL", cfg.Name)
			}
		}
		stderr.Flush()
		stdio.Flush()
		os.RemoveAll(sockDir)
	}

	rpc, err := client.Client()
	if err != nil {
		stop(false)
		if errors.Is(err, goplugin.ErrChecksumsDoNotMatch) {
			return nil, fmt.Errorf("%w: %s changed on disk while starting; refusing to start it", ErrChecksum, cfg.Path)
		}
		return nil, fmt.Errorf("start: %w", err)
	}
	gc, ok := rpc.(*goplugin.GRPCClient)
	if !ok {
		stop(false)
		return nil, errors.New("start: plugin does not speak gRPC")
	}
	inst := &instance{
		started: time.Now(),
		exited:  client.Exited,
		stop:    stop,
	}
	if cmd.Process != nil {
		inst.pid = cmd.Process.Pid
	}
	hctx, cancel := context.WithTimeout(ctx, l.opts.StartTimeout)
	defer cancel()
	if err := handshake(hctx, gc.Conn, l.configJSON, inst); err != nil {
		stop(false)
		return nil, err
	}
	return inst, nil
}

// hostPlugin is the host's half of go-plugin's plugin set. tsidp talks to
// the connection directly, so dispensing is never used; the entry only
// takes part in version negotiation.
type hostPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
}

func (hostPlugin) GRPCServer(*goplugin.GRPCBroker, *grpc.Server) error {
	return errors.New("tsidp is not a plugin")
}

func (hostPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return claimsv1.NewClaimsPluginClient(c), nil
}
