// Package crashtest lets tests kill a tsidp process at a named step of a
// key-set write, to show that a crash at any step leaves a usable key set.
//
// The hook exists only in binaries built with the build tag
// tsidp_crashtest (integration/crash_test.go builds one). In every other
// build, Point is an empty function the compiler removes, and the
// environment variable is never read: a production binary cannot be made
// to crash through it.
//
// In a test build, TSIDP_TEST_CRASH_AT=<step> makes the process print
// "crashtest: SIGKILL at <step>" to stderr and send itself SIGKILL the
// first time it reaches Point(<step>). No deferred function, flush or
// cleanup runs: it is the same as the machine losing power at that
// instant, as far as files already written are concerned.
package crashtest

// EnvVar names the step to crash at, in a test build.
const EnvVar = "TSIDP_TEST_CRASH_AT"

// Steps of a key-set write, in the order they happen. Not every store
// reaches every step.
const (
	// BeforeSave: the new set is computed in memory; nothing is written.
	BeforeSave = "update:before-save"
	// FileTempSynced: the file store wrote and fsynced its temporary
	// file but has not renamed it over keyset.json.
	FileTempSynced = "filestore:temp-synced"
	// FileRenamed: the file store renamed the temporary file into place
	// but has not fsynced the directory.
	FileRenamed = "filestore:renamed"
	// EtcdBeforeTxn: the etcd store checked the stored version and is
	// about to send the compare-and-swap transaction.
	EtcdBeforeTxn = "etcdstore:before-txn"
	// EtcdAfterTxn: the etcd transaction committed; the caller has not
	// seen the answer yet.
	EtcdAfterTxn = "etcdstore:after-txn"
	// AfterSave: Save returned; the Manager has not switched its signer
	// and JWKS to the new set.
	AfterSave = "update:after-save"
	// Installed: the Manager signs with, and publishes, the new set.
	Installed = "manager:installed"
)
