package keys

import "time"

// SetPollInterval shortens Watch polling for the external conformance test.
func SetPollInterval(s *FileStore, d time.Duration) { s.pollInterval = d }
