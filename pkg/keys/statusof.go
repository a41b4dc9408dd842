package keys

import "time"

// StatusOf reports the status of set under policy p at time now, for tools
// that read a store without running a Manager (`tsidp keys list` offline).
func StatusOf(set *Set, p Policy, now time.Time) Status { return statusOf(set, p, now) }
