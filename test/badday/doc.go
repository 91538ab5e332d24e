// Package badday tests the core on a bad day with the real outpost binary:
// an uplink with seconds of latency, a disk that fills up (a small tmpfs),
// clients that stall on a large manifest while RSS is measured, many cold
// blobs from a trickling upstream, and Outposts chained site → regional →
// registry (CNCF distribution v3.1.2). Everything runs on loopback; the
// tmpfs test needs root (skipped locally without it, required with CI=true).
package badday
