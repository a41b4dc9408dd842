package sdk

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestLoggerShape(t *testing.T) {
	var b bytes.Buffer
	newLogger(&b).Warn("bind failed", "server", "ldap://x")
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m["@level"] != "warn" || m["@message"] != "bind failed" || m["server"] != "ldap://x" || m["@timestamp"] == nil {
		t.Errorf("log line = %s", b.Bytes())
	}
}
