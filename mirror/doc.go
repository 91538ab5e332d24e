// Package mirror owns Outpost's access to upstream registries: token and
// basic auth (go-containerregistry's transport), retries with backoff that
// honour Retry-After (go-retryablehttp), failover across an upstream's URLs,
// ranged blob reads for resume, and the up/down state that lets the cache
// answer at once from disk while an uplink is dead.
//
// Later it also holds the sync engine (scheduled mirroring into store
// sessions). It imports store, never cache.
package mirror
