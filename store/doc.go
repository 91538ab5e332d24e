// Package store owns Outpost's data directory: content-addressed blob files on
// disk and Badger metadata about them. It knows nothing about HTTP.
//
// Layout under the storage root:
//
//	meta/                       Badger (its directory lock means one Outpost per root)
//	blobs/sha256/ab/abcdef…     blobs and manifests, by digest; complete, verified, read-only
//	.sync/<uuid>/               a staging session: session.json and <alg>-<hex>.part files
//
// Every write goes through a Session: content is written to a part file in the
// session directory, hashed as it is written, checked against its digest and
// size, fsynced, and only published by Commit: rename into blobs/, fsync the
// directories, then one Badger transaction. Hence the invariants, checked by
// tests after every scenario (see CheckInvariants):
//
//  1. A b/ or m/ key implies its file is complete and verified.
//  2. A blob file without a b/ or m/ key is garbage; Open sweeps it.
//  3. A tag points at a manifest that exists (written in the same transaction).
//  4. Removal (eviction, GC) must delete keys, sync Badger, then unlink files,
//     never the other way round.
//  5. On Open, fill sessions are removed (a pull-through fill is cheap to
//     redo); other kinds younger than their TTL are kept so that later sync and
//     upload code can resume their part files.
//
// Badger runs with SyncWrites off to spare flash: a crash can lose the last
// metadata writes, which by invariant 2 only leaves garbage files, never a key
// without its file.
package store
