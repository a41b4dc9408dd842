package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"

	"tailscale.com/types/logger"
)

// Limits on what a plugin can make tsidp log.
const (
	maxLogLine     = 4 << 10 // bytes of one stderr line kept
	maxLogPerSec   = 50      // lines logged per second per plugin
	maxLogKVs      = 16      // extra key/value pairs shown from a JSON line
	maxLogKVLength = 256     // bytes of one shown value
)

// lineLogger is an io.Writer that splits a plugin's output into lines and
// logs each under the plugin's name. It replaces go-plugin's own stderr
// parser, which panics on a JSON line whose "@message" is not a string.
// It never blocks on anything but its own mutex, so a chatty plugin cannot
// stall on a full pipe, and it rate-limits what reaches the log.
type lineLogger struct {
	name   string
	stream string
	logf   logger.Logf

	mu        sync.Mutex
	buf       []byte
	truncated bool
	window    time.Time
	inWindow  int
	dropped   int
}

func newLineLogger(name, stream string, logf logger.Logf) *lineLogger {
	return &lineLogger{name: name, stream: stream, logf: logf}
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := maxLogLine - len(l.buf); len(chunk) > room {
			l.buf = append(l.buf, chunk[:max(room, 0)]...)
			l.truncated = true
		} else {
			l.buf = append(l.buf, chunk...)
		}
		if i < 0 {
			break
		}
		l.emit()
		p = p[i+1:]
	}
	return n, nil
}

// Flush logs a final line without a newline.
func (l *lineLogger) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.emit()
	}
}

func (l *lineLogger) emit() {
	line := string(bytes.TrimSpace(l.buf))
	truncated := l.truncated
	l.buf, l.truncated = l.buf[:0], false
	if line == "" {
		return
	}
	now := time.Now()
	if now.Sub(l.window) >= time.Second {
		if l.dropped > 0 {
			l.logf("plugin %s: %d %s lines not logged (over %d per second)", l.name, l.dropped, l.stream, maxLogPerSec)
		}
		l.window, l.inWindow, l.dropped = now, 0, 0
	}
	if l.inWindow >= maxLogPerSec {
		l.dropped++
		return
	}
	l.inWindow++
	level, msg := formatLine(line)
	if level != "" {
		level = " [" + level + "]"
	}
	if truncated {
		msg += " [truncated]"
	}
	l.logf("plugin %s%s%s: %s", l.name, l.stream, level, msg)
}

// formatLine renders one line of plugin output. JSON lines in hclog's or
// slog's shape yield their level and "message k=v ..."; anything else is
// shown as is. Any field of any type is accepted: the input is untrusted.
func formatLine(line string) (level, msg string) {
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			return formatJSON(m)
		}
	}
	return "", sanitize(line)
}

func formatJSON(m map[string]any) (level, msg string) {
	take := func(keys ...string) string {
		for _, k := range keys {
			if v, ok := m[k]; ok {
				delete(m, k)
				return short(v)
			}
		}
		return ""
	}
	level = take("@level", "level")
	var b strings.Builder
	b.WriteString(take("@message", "msg", "message"))
	delete(m, "@timestamp")
	delete(m, "time")
	delete(m, "@module")
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		if i == maxLogKVs {
			fmt.Fprintf(&b, " (+%d more)", len(keys)-i)
			break
		}
		fmt.Fprintf(&b, " %s=%s", sanitize(k), short(m[k]))
	}
	return level, b.String()
}

// short renders any JSON value as bounded, printable text.
func short(v any) string {
	var s string
	switch v := v.(type) {
	case string:
		s = v
	default:
		j, _ := json.Marshal(v)
		s = string(j)
	}
	s = sanitize(s)
	if len(s) > maxLogKVLength {
		s = s[:maxLogKVLength] + "…"
	}
	return s
}

// sanitize replaces control characters, so that a plugin cannot forge log
// lines or send terminal escapes.
func sanitize(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) && r != ' ' }) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) && r != ' ' {
			return '?'
		}
		return r
	}, s)
}
