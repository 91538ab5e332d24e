// Package mirror owns Outpost's access to upstream registries and every
// policy of it: token and basic auth (go-containerregistry's transport),
// retries with backoff that honour Retry-After (go-retryablehttp), failover
// across an upstream's URLs with a return to the preferred one, the health
// model that tells a slow uplink from a dead one, the redirect policy, the
// checks on what comes back (manifests must be manifests and match their
// digest), and blob transfers with Range resume, deadlines and size limits.
//
// Later it also holds the sync engine (scheduled mirroring into store
// sessions). It imports store, never cache.
package mirror
