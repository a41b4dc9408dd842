// Command example-go is the smallest useful tsidp claims plugin: it puts
// the caller's login domain in a "domain" claim and refuses callers from
// the domains its configuration lists.
package main

import (
	"context"
	"encoding/json"
	"slices"
	"strings"

	"github.com/tsidp/tsidp/pkg/claims/sdk"
)

type domains struct {
	deny []string
}

func (d *domains) Describe() sdk.Description {
	return sdk.Description{Name: "example-go", Version: "1.0.0", Claims: []string{"domain"}, Cacheable: true}
}

func (d *domains) Configure(_ context.Context, config json.RawMessage) error {
	var c struct {
		Deny []string `json:"deny"`
	}
	if err := json.Unmarshal(config, &c); err != nil {
		return err
	}
	d.deny = c.Deny
	return nil
}

func (d *domains) Enrich(_ context.Context, req *sdk.Request) (*sdk.Response, error) {
	_, domain, ok := strings.Cut(req.Identity.LoginName, "@")
	if !ok {
		return sdk.Allow(nil), nil // tagged devices have no login
	}
	if slices.Contains(d.deny, domain) {
		return sdk.Deny("people from " + domain + " may not get tokens"), nil
	}
	return sdk.Allow(map[string]any{"domain": domain}), nil
}

func main() { sdk.Serve(&domains{}) }
