// Package testenv is the machinery Outpost's process-level test suites
// (test/e2e, test/conformance, test/bench) share: finding external programs
// (skipped locally, required with CI=true), building ./cmd/outpost once,
// starting processes in their own process group, waiting for /v2/, and
// starting a CNCF distribution registry or outpost with a generated config.
//
// Everything listens on 127.0.0.1, and every started process gets Env: its
// proxy variables point at DeadAddr, so a client that tries to leave the
// machine fails fast. Only tests import this package.
package testenv
