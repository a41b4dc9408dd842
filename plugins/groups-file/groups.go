package main

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// File is the groups file: group names mapped to member selectors.
//
//	groups:
//	  eng: ["*@example.com", "tag:ci"]
//	  admins: ["user:alice@example.com", "node:bastion"]
//
// JSON works too ({"groups": {"eng": ["*@example.com"]}}): YAML is a
// superset of it.
//
// Members are login globs ("*@example.com", case-insensitive), people
// ("user:alice@example.com"), tags ("tag:ci") and nodes. "node:bastion"
// matches a node whose host name (the first label of its MagicDNS name) is
// bastion; a name with a dot, "node:bastion.example.ts.net", only that full
// MagicDNS name. Nodes shared in from other tailnets never match tag: or
// node: members — their names and tags are another tailnet's — but their
// people match login globs and user: members, since logins are global.
type File struct {
	Groups map[string][]string `yaml:"groups"`
}

// Caller is what a selector is matched against.
type Caller struct {
	Login    string // empty for tagged devices
	NodeName string // MagicDNS name, e.g. "laptop.example.ts.net"
	Tags     []string
	Tagged   bool
	// Sharee reports a node shared in from another tailnet. Its name and
	// tags are that tailnet's, so node: and tag: selectors never match it;
	// its login is global and still matches login selectors.
	Sharee bool
}

// selector is one compiled member entry.
type selector struct {
	kind  string // "glob", "user", "tag" or "node"
	value string // lower-cased, except tags; node names without a trailing dot
}

func (s selector) match(c *Caller) bool {
	switch s.kind {
	case "tag":
		return c.Tagged && !c.Sharee && slices.Contains(c.Tags, s.value)
	case "node":
		if c.Sharee {
			return false
		}
		name := strings.ToLower(strings.TrimSuffix(c.NodeName, "."))
		if strings.Contains(s.value, ".") {
			// A dotted name is a full MagicDNS name.
			return s.value == name
		}
		host, _, _ := strings.Cut(name, ".")
		return s.value == host
	case "user":
		return !c.Tagged && c.Login != "" && strings.EqualFold(c.Login, s.value)
	default: // login glob; tagged devices have no login to match
		ok, _ := path.Match(s.value, strings.ToLower(c.Login))
		return !c.Tagged && c.Login != "" && ok
	}
}

func parseSelector(s string) (selector, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return selector{}, errors.New("empty member")
	}
	if kind, v, ok := strings.Cut(s, ":"); ok && !strings.Contains(kind, "@") {
		if v == "" {
			return selector{}, fmt.Errorf("member %q: nothing after %q", s, kind+":")
		}
		switch kind {
		case "tag":
			return selector{"tag", s}, nil // tags keep their "tag:" prefix
		case "node":
			return selector{"node", strings.ToLower(strings.TrimSuffix(v, "."))}, nil
		case "user":
			return selector{"user", strings.ToLower(v)}, nil
		default:
			return selector{}, fmt.Errorf("member %q: unknown kind %q (want tag:, node:, user: or a login glob)", s, kind)
		}
	}
	if _, err := path.Match(s, ""); err != nil {
		return selector{}, fmt.Errorf("member %q: %w", s, err)
	}
	return selector{"glob", strings.ToLower(s)}, nil
}

// Table is a compiled groups file.
type Table struct {
	names []string // sorted
	sels  map[string][]selector
}

// Parse compiles a groups file. Unknown keys and malformed members are
// errors, so that a typo does not silently drop someone from a group.
func Parse(data []byte) (*Table, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	t := &Table{sels: make(map[string][]selector, len(f.Groups))}
	for name, members := range f.Groups {
		if name == "" || strings.ContainsAny(name, " \t\n") {
			return nil, fmt.Errorf("group %q: names must not be empty or contain spaces", name)
		}
		for _, m := range members {
			s, err := parseSelector(m)
			if err != nil {
				return nil, fmt.Errorf("group %q: %w", name, err)
			}
			t.sels[name] = append(t.sels[name], s)
		}
		t.names = append(t.names, name)
	}
	slices.Sort(t.names)
	return t, nil
}

// Groups returns the sorted names of the groups c belongs to.
func (t *Table) Groups(c *Caller) []string {
	var out []string
	for _, name := range t.names {
		if slices.ContainsFunc(t.sels[name], func(s selector) bool { return s.match(c) }) {
			out = append(out, name)
		}
	}
	return out
}
