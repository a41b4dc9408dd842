package main

import (
	"context"
	"testing"

	"github.com/tsidp/tsidp/pkg/claims/plugin"
	"github.com/tsidp/tsidp/pkg/claims/sdk/sdktest"
)

func TestDomains(t *testing.T) {
	p := sdktest.Start(t, &domains{}, map[string]any{"deny": []string{"evil.example"}})
	ctx := context.Background()

	res, err := p.Enrich(ctx, sdktest.Request(sdktest.Person("alice@example.com"), "https://api.example.com"))
	if err != nil || sdktest.Claim(res, "domain") != `"example.com"` {
		t.Errorf("alice: %+v, %v", res, err)
	}
	res, err = p.Enrich(ctx, sdktest.Request(sdktest.Person("mallory@evil.example"), "https://api.example.com"))
	if err != nil || !res.Deny {
		t.Errorf("mallory: %+v, %v", res, err)
	}
	res, err = p.Enrich(ctx, sdktest.Request(sdktest.Tagged("ci", "tag:ci"), "https://api.example.com"))
	if err != nil || res.Deny || len(res.Claims) != 0 {
		t.Errorf("tagged: %+v, %v", res, err)
	}
}

func TestBinary(t *testing.T) {
	path, sum := sdktest.Build(t, ".")
	p := sdktest.StartBinary(t, plugin.Config{Path: path, SHA256: sum, Config: map[string]any{"deny": []string{"evil.example"}}})
	res, err := p.Enrich(context.Background(), sdktest.Request(sdktest.Person("alice@example.com"), "aud"))
	if err != nil || sdktest.Claim(res, "domain") != `"example.com"` {
		t.Errorf("alice: %+v, %v", res, err)
	}
}
