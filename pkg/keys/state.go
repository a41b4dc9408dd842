package keys

// State is where a key is in its lifecycle.
type State string

const (
	// StateNext is a published key that does not sign yet. It becomes
	// active at the next rotation.
	StateNext State = "next"
	// StateActive is the key that signs new tokens. There is exactly one per
	// algorithm.
	StateActive State = "active"
	// StateRetired is a former active key, still published so that tokens it
	// signed keep verifying until they expire.
	StateRetired State = "retired"
	// StateRevoked is a key withdrawn from the JWKS at once. Its private
	// material is gone; the entry remains as a tombstone for a while.
	StateRevoked State = "revoked"
)

// Valid reports whether s is a known state.
func (s State) Valid() bool { return s.rank() >= 0 }

// Published reports whether keys in state s appear in the JWKS.
func (s State) Published() bool {
	return s == StateNext || s == StateActive || s == StateRetired
}

// rank orders states for listings and the JWKS: the signing key first.
func (s State) rank() int {
	switch s {
	case StateActive:
		return 0
	case StateNext:
		return 1
	case StateRetired:
		return 2
	case StateRevoked:
		return 3
	}
	return -1
}
