// Package e2e holds Outpost's end-to-end tests. They build the real outpost
// binary, put it in front of CNCF distribution registries seeded with
// synthetic images, and drive real clients (crane, skopeo, containerd/ctr)
// through it. All traffic stays on loopback.
//
// Requirements: the `registry` (distribution v3) and `crane` binaries on PATH
// or in $(go env GOPATH)/bin, skopeo and containerd for their tests, and root
// for containerd. scripts/install-test-deps.sh installs all of them. A test
// whose external program is missing is skipped locally and fails when CI=true.
//
// Setting OUTPOST_E2E_STANDIN=distribution replaces outpost with a
// distribution registry in proxy mode. It exists only to check the harness
// itself: tests of Outpost-specific behaviour skip in that mode, and TestBlobs
// fails there by design (the distribution proxy answers a cold Range request
// with 200, fetches once per concurrent request, and serves and keeps a
// corrupt upstream blob), which shows that those checks can fail.
package e2e
