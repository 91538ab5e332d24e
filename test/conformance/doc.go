// Package conformance runs the official OCI distribution-spec conformance
// suite (github.com/opencontainers/distribution-spec/conformance) against
// content served by Outpost.
//
// Outpost is a read-only pull-through cache, so the suite cannot push into
// it. The test therefore uses the suite's read-only mode
// (OCI_API_PUSH=false plus OCI_RO_DATA_TAGS, OCI_RO_DATA_MANIFESTS,
// OCI_RO_DATA_BLOBS and OCI_RO_DATA_REFERRERS, which replace the legacy
// OCI_TAG_NAME, OCI_MANIFEST_DIGEST and OCI_BLOB_DIGEST variables):
//
//  1. a CNCF distribution registry is started as the upstream and seeded by
//     running the same suite against it with push enabled (deletes off), so
//     the upstream holds the suite's own images, indexes, nested indexes,
//     artifacts, referrers, large and custom-field manifests, empty blobs…;
//  2. every tag, manifest and blob the upstream holds in the repository is
//     enumerated, and outpost is started with that registry as its default
//     upstream;
//  3. the cache is warmed by pulling all of it through outpost once;
//  4. the suite runs in read-only mode against outpost ("online"), then again
//     with the upstream stopped, so that every answer comes from the cache
//     ("offline").
//
// In read-only mode the suite checks status codes and digests but not
// bodies, Content-Type or Content-Length (it does not know the content).
// So, while the upstream is still up, the full read-write suite also runs
// ("split") against a front that sends GET and HEAD to a second outpost
// (tagTTL 0s, because the suite re-pushes tags such as "index" and "image"
// to new content) and everything else (pushes, upload sessions) to the
// upstream. Deletes are off, as a cache keeps what it served. There every
// pull is checked byte for byte; a test counts as failed only if it passes
// in the seeding run directly against the upstream, since distribution v3
// itself fails some (no referrers API, no sha512, no OCI-Subject header).
//
// Any conformance failure fails the test, with the suite's test name, error
// and the request/response it recorded. OUTPOST_CONFORMANCE_RESULTS=DIR keeps
// each run's results.yaml/junit.xml/report.html under DIR (for CI
// artifacts). In read-only mode this suite version crashes while writing
// results.yaml, so junit.xml and report.html exist only for the seed and
// split runs; the test reads the suite's text report instead (see runSuite).
//
// Requirements: `go` (the suite is built with `go install module@version`
// from the Go module proxy into a temporary GOBIN, outside outpost's go.mod)
// and the `registry` binary (distribution v3) on PATH or in
// $(go env GOPATH)/bin, as scripts/install-test-deps.sh installs it.
// OUTPOST_CONFORMANCE_BIN may name a prebuilt suite binary instead. When
// something is missing the test is skipped locally and fails with CI=true.
package conformance
