// Package keys manages tsidp's signing keys: the per-algorithm key set and
// its lifecycle (next → active → retired, or revoked), the guarantees that
// lifecycle gives verifiers, the JWKS document, the in-memory signer used on
// the token hot path, and the stores that persist the set.
//
// # Lifecycle
//
// For every configured algorithm the set holds exactly one active key (the
// one that signs) and one next key. The next key is published in the JWKS
// before it ever signs, so verifiers that cache the JWKS already know it
// when rotation promotes it: rotation refuses (unless forced) until the next
// key has been published for at least JWKSMaxAge+ClockSkew. Rotation retires
// the active key; a retired key stays published until every token it signed
// has expired (MaxTokenTTL+ClockSkew after it stopped signing) and is then
// pruned. A revoked key leaves the JWKS at once and loses its private
// material; its entry stays as a tombstone for a while so that listing shows
// it and it cannot be imported again.
//
// # Persistence
//
// A [Store] holds one versioned [Set]. Writers use [Update], a
// load-modify-compare-and-swap loop, so a daemon, the CLI and replicas can
// all write without losing each other's changes. Package filestore is the
// embedded default and package etcdstore the replicated one; package
// keystest holds the conformance suite every store must pass. What only
// some stores can do is an optional capability ([Watcher], [Elector],
// [HealthChecker]), and each store's configuration opens it
// ([StoreConfig]), so that nothing outside package config needs to know
// which store it uses. A running [Manager] never
// adopts, nor writes over, a stored set older than its own (a store deleted
// or restored from an old copy): see [RegressionError].
//
// # Administration
//
// [Administrator] is what operators do to a set (list, init, rotate,
// revoke, import, export the JWKS), each operation defined once: a
// [Manager] does it to the set of the running process, [Offline] to a
// store no daemon serves, and package admin's client to a daemon over its
// admin socket.
//
// # Signing
//
// [Manager] compiles the stored set into immutable per-algorithm signers
// (precomputed protected headers, parsed private keys) and a rendered JWKS,
// and swaps them atomically when the set changes. [Manager.Sign] does no I/O.
package keys
