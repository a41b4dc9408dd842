package config

import (
	"strings"
	"testing"
	"time"
)

func TestEtcdStoreSettings(t *testing.T) {
	base := func() *Config {
		c := &Config{Issuer: "https://idp.example", StateDir: t.TempDir()}
		c.Keys.Store = "etcd://10.0.0.1:2379,10.0.0.2:2379"
		c.Keys.Etcd.KEKFile = "/etc/tsidp/kek"
		c.Provision()
		return c
	}
	c := base()
	if err := c.Validate(); err != nil {
		t.Fatalf("valid etcd config: %v", err)
	}
	if eps, _ := c.EtcdEndpoints(); strings.Join(eps, " ") != "10.0.0.1:2379 10.0.0.2:2379" {
		t.Errorf("endpoints = %q", eps)
	}
	if c.Keys.Etcd.Prefix != "/tsidp/" || c.Keys.Etcd.DialTimeout != 5*time.Second || c.Keys.Etcd.ElectionTTL != 10*time.Second {
		t.Errorf("etcd defaults = %+v", c.Keys.Etcd)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no kek", func(c *Config) { c.Keys.Etcd.KEKFile = "" }, "kek_file (--kek-file) is required"},
		{"bad scheme", func(c *Config) { c.Keys.Store = "etcd:10.0.0.1:2379" }, `must be "file" or "etcd://`},
		{"no port", func(c *Config) { c.Keys.Store = "etcd://10.0.0.1" }, `endpoint "10.0.0.1" is not host:port`},
		{"empty endpoint", func(c *Config) { c.Keys.Store = "etcd://10.0.0.1:2379," }, `endpoint "" is not host:port`},
		{"path", func(c *Config) { c.Keys.Store = "etcd://10.0.0.1:2379/x" }, "not host:port"},
		{"cert without key", func(c *Config) { c.Keys.Etcd.CertFile = "c.pem" }, "cert_file and keys.etcd.key_file go together"},
		{"short ttl", func(c *Config) { c.Keys.Etcd.ElectionTTL = 2 * time.Second }, "election_ttl 2s: must be between 3s and 5m"},
		{"fractional ttl", func(c *Config) { c.Keys.Etcd.ElectionTTL = 3500 * time.Millisecond }, "whole seconds"},
		{"dial timeout", func(c *Config) { c.Keys.Etcd.DialTimeout = -time.Second }, "dial_timeout"},
	} {
		c := base()
		tc.edit(c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "config: ") {
			t.Errorf("%s: %v; want an error containing %q", tc.name, err, tc.want)
		}
	}
	// The file store ignores etcd settings.
	c = base()
	c.Keys.Store = "file"
	c.Keys.Etcd.KEKFile = ""
	if err := c.Validate(); err != nil {
		t.Errorf("file store with empty etcd settings: %v", err)
	}
	// Unknown keys in keys.etcd are named with their section.
	var p Config
	if err := Parse([]byte("keys:\n  etcd:\n    kek: x\n"), &p); err == nil || !strings.Contains(err.Error(), `unknown key "kek" (in keys.etcd)`) {
		t.Errorf("unknown etcd key: %v", err)
	}
}
