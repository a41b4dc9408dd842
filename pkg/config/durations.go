package config

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/tsidp/tsidp/internal/duration"
	"github.com/tsidp/tsidp/pkg/keys"
)

// zeroMeans lists the duration settings for which an explicit 0 means
// something other than "the default", and what. Every other duration
// setting refuses an explicit 0: in Go a zero field means "unset, use the
// default", so accepting a written 0 would silently substitute the default
// for what the operator wrote (jwks_max_age: 0s served max-age=3600).
var zeroMeans = map[string]string{
	"keys.rotation_period": "disables scheduled rotation",
	"keys.jwks_max_age":    "verifiers must not cache the JWKS",
}

// zeroRefusals says, for some settings, why an explicit 0 is refused and
// what to write instead. Settings not listed get a generic reason.
var zeroRefusals = map[string]string{
	"keys.clock_skew": "clocks always differ a little, and tsidp backdates nbf and keeps keys published by this much; " +
		"omit it for the default " + duration.Format(keys.DefaultClockSkew) + ", or write at least 1s",
	"plugins[].cache_ttl": "omit it for the default, or write a negative duration such as -1s to disable caching",
	"audiences[].ttl":     "omit it to inherit tokens.default_ttl",
	"audiences[].max_ttl": "omit it to inherit tokens.max_ttl",
}

var durationType = reflect.TypeOf(time.Duration(0))

// fixDurations checks the duration settings of a YAML document before the
// strict decode into a Config, and returns the document to decode:
//
//   - A plain 0 is rewritten to 0s. YAML reads 0 as an integer, which
//     yaml.v3 refuses for a time.Duration, yet "rotation_period: 0" is the
//     natural way to write "off".
//   - An explicit zero is refused where zero would mean "the default" (see
//     zeroMeans), naming the line and the setting.
//   - A well-formed duration too long to represent ("87600001h") is
//     reported as out of range rather than as "not a duration".
//
// Rewrites are made in place in the bytes, so line numbers in later errors
// still match the file. A document that does not parse is returned as is:
// the strict decode reports the syntax error.
func fixDurations(b []byte) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil || len(doc.Content) == 0 {
		return b, nil
	}
	w := durationWalk{src: b}
	if err := w.walk(doc.Content[0], reflect.TypeOf(Config{}), "", ""); err != nil {
		return nil, err
	}
	if len(w.edits) == 0 {
		return b, nil
	}
	// Apply from the end, so earlier offsets stay valid.
	slices.SortFunc(w.edits, func(a, b int) int { return b - a })
	out := bytes.Clone(b)
	for _, off := range w.edits {
		out = slices.Insert(out, off, 's')
	}
	return out, nil
}

type durationWalk struct {
	src   []byte
	edits []int // byte offsets after a plain "0" to append "s" at
}

// walk visits n, decoded into t. path names the setting with list indices
// written "[]" (to look it up in zeroMeans), shown with its indices.
func (w *durationWalk) walk(n *yaml.Node, t reflect.Type, path, shown string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		if n.Kind == yaml.ScalarNode {
			return w.duration(n, path, shown)
		}
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			f, ok := fieldByTag(t, key.Value)
			if !ok {
				continue // the strict decode names the unknown key
			}
			if err := w.walk(val, f.Type, joinPath(path, key.Value), joinPath(shown, key.Value)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, e := range n.Content {
			if err := w.walk(e, t.Elem(), path+"[]", fmt.Sprintf("%s[%d]", shown, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// duration checks one duration scalar.
func (w *durationWalk) duration(n *yaml.Node, path, shown string) error {
	v := n.Value
	if n.Tag == "!!null" {
		return nil
	}
	if n.Tag == "!!int" {
		if i, err := strconv.ParseInt(v, 0, 64); err != nil || i != 0 {
			return nil // the strict decode says to write a unit
		}
		if n.Style == 0 && v == "0" {
			if off, ok := w.offset(n); ok {
				w.edits = append(w.edits, off+1)
			}
		}
	} else {
		d, err := duration.Parse(v)
		if err != nil {
			if duration.IsOutOfRange(v) {
				return fmt.Errorf("line %d: %s: %v", n.Line, shown, err)
			}
			return nil // the strict decode reports it, with its line
		}
		if d != 0 {
			return nil
		}
	}
	if _, ok := zeroMeans[path]; ok {
		return nil
	}
	why, ok := zeroRefusals[path]
	if !ok {
		why = "omit it for the default, or write a positive duration"
	}
	return fmt.Errorf("line %d: %s: an explicit %s is not allowed: %s", n.Line, shown, v, why)
}

// offset returns the byte offset of n's first character in w.src. yaml.v3
// counts columns in characters; the scalar must be found there, else no
// rewrite is made and the strict decode reports the value.
func (w *durationWalk) offset(n *yaml.Node) (int, bool) {
	off := 0
	for line := 1; line < n.Line; line++ {
		i := bytes.IndexByte(w.src[off:], '\n')
		if i < 0 {
			return 0, false
		}
		off += i + 1
	}
	for col := 1; col < n.Column; col++ {
		if off >= len(w.src) || w.src[off] == '\n' {
			return 0, false
		}
		_, size := utf8.DecodeRune(w.src[off:])
		off += size
	}
	if !bytes.HasPrefix(w.src[off:], []byte(n.Value)) {
		return 0, false
	}
	return off, true
}

// fieldByTag finds the field of struct t whose yaml tag names key.
func fieldByTag(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == key && f.IsExported() {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
