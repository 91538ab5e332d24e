package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ErrNotFound is returned when the store has no such blob, manifest or tag.
var ErrNotFound = errors.New("not found")

// Options tune a Store. The zero value is usable.
type Options struct {
	Logger *slog.Logger
	// Now is the clock, replaceable in tests.
	Now func() time.Time
	// Reserve is the free disk space kept for metadata; 0: DefaultReserve.
	Reserve int64
	// SpaceCheck is how often free space is measured in the background;
	// 0: every 5s.
	SpaceCheck time.Duration
}

// Store is the data directory. It is safe for concurrent use.
type Store struct {
	root string
	log  *slog.Logger
	now  func() time.Time

	// db is swapped only when a read-only store (opened on a full disk) is
	// reopened for writing; everything else holds dbMu for reading.
	dbMu     sync.RWMutex
	db       *badger.DB
	readOnly atomic.Bool

	space     space
	access    accessLog
	stats     stats
	manifests manifestCache
	links     linkCache
	tags      tagCache
	locks     digestLocks
	lock      *os.File   // the process lock (lock_unix.go), held until Close
	writeMu   sync.Mutex // serializes metadata transactions (see update)

	writingMu sync.Mutex
	writing   map[string]*inflight // digest → the write in progress

	sessionsMu sync.Mutex
	sessions   map[string]bool // ids of the sessions open in this process

	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// Open opens (creating if needed) the store under root, sweeps what a crash
// left behind, and starts the background work (access-time flushes, the
// free-space watch). On a disk too full for Badger to start writing, it
// opens read-only and reopens for writing once space is freed.
func Open(root string, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SpaceCheck <= 0 {
		opts.SpaceCheck = 5 * time.Second
	}
	for _, dir := range []string{root, filepath.Join(root, "meta"), filepath.Join(root, "blobs"), filepath.Join(root, syncDir)} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	lock, err := lockRoot(root)
	if err != nil {
		return nil, err
	}
	opened := false
	defer func() {
		if !opened {
			lock.Close()
		}
	}()
	s := &Store{root: root, log: opts.Logger, now: opts.Now, space: newSpace(opts.Reserve), lock: lock,
		writing: map[string]*inflight{}, sessions: map[string]bool{}, stop: make(chan struct{})}
	s.access.pending = map[string]int64{}
	s.manifests.init(manifestCacheBytes)
	// Interrupted sessions go first: on a full disk, that may be what
	// makes room for Badger.
	if err := s.sweepSessions(); err != nil {
		return nil, fmt.Errorf("store: cleaning up %s: %w", root, err)
	}
	if err := s.openDB(); err != nil {
		return nil, err
	}
	if err := s.checkSchema(); err != nil {
		s.db.Close()
		return nil, err
	}
	if err := s.sweepBlobs(); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("store: cleaning up %s: %w", root, err)
	}
	if err := s.repairMissing(); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("store: repairing %s: %w", root, err)
	}
	if err := s.loadStats(); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	s.keepBallast()
	s.wg.Add(2)
	go s.background()
	go s.watchSpace(opts.SpaceCheck)
	opened = true
	return s, nil
}

// minFreeToOpen is what Badger needs to open for writing: its lock file,
// a new memtable log's first pages, a manifest rewrite.
const minFreeToOpen = 2 << 20

func (s *Store) openDB() error {
	dir := filepath.Join(s.root, "meta")
	// A log to replay (an unclean stop) needs room for Badger to flush it,
	// and cannot be opened read-only: make the room, at worst by giving up
	// cached blobs (see emergency.go).
	need := int64(minFreeToOpen)
	if dirtyLog(dir) {
		need = s.space.floor
	}
	free := s.measure()
	if free < s.space.floor && s.releaseBallast(1) {
		free = s.measure()
	}
	if free < need && s.releaseBallast(2) {
		free = s.measure()
	}
	if free < need && need > minFreeToOpen && s.emergencyFree(need) {
		free = s.measure()
	}
	if free >= minFreeToOpen {
		db, err := badger.Open(badgerOptions(dir, s.log))
		if err != nil {
			return fmt.Errorf("store: open metadata in %s: %w", s.root, err)
		}
		s.db = db
		return nil
	}
	db, err := badger.Open(badgerOptions(dir, s.log).WithReadOnly(true))
	if err != nil {
		return fmt.Errorf("store: %s has %d bytes free, too few to open its metadata for writing, and it cannot be opened read-only (%v); free some space and start again",
			s.root, free, err)
	}
	s.db = db
	s.readOnly.Store(true)
	s.log.Error("the disk is full: serving cached content read-only; caching resumes once space is freed",
		"root", s.root, "free", free)
	return nil
}

// reopenWritable replaces a read-only Badger by a writable one, once there
// is room for it.
func (s *Store) reopenWritable() error {
	if s.measure() < s.space.floor {
		return fmt.Errorf("%w: %d bytes free", ErrNoSpace, s.space.free.Load())
	}
	if err := s.swapWritable(); err != nil {
		return err
	}
	s.log.Info("free space is back: the store is writable again", "root", s.root, "free", s.space.free.Load())
	return s.checkSchema()
}

func (s *Store) swapWritable() error {
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	dir := filepath.Join(s.root, "meta")
	if err := s.db.Close(); err != nil {
		return err
	}
	db, err := badger.Open(badgerOptions(dir, s.log))
	if err != nil {
		// Back to read-only, which worked before.
		ro, roErr := badger.Open(badgerOptions(dir, s.log).WithReadOnly(true))
		if roErr != nil {
			return errors.Join(err, roErr)
		}
		s.db = ro
		return err
	}
	s.db = db
	s.readOnly.Store(false)
	return nil
}

// badgerOptions sizes Badger for a 1 GiB Raspberry Pi. Metadata is small
// (well under a KiB per entry), so tiny memtables and caches are plenty:
// 2 × 4 MiB memtables, an 8 MiB block cache and 4 MiB index cache, 16 MiB
// value-log files. Values stay in the LSM tree (threshold 64 KiB, below 15 %
// of the memtable as Badger requires), so the value log needs no GC in
// practice. SyncWrites is off (see doc.go for why that is safe).
func badgerOptions(dir string, log *slog.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log}).
		WithMemTableSize(4 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(6).
		WithBaseTableSize(1 << 20).
		WithBaseLevelSize(4 << 20).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(16 << 20).
		WithValueThreshold(64 << 10).
		WithNumCompactors(2).
		WithNumGoroutines(2).
		WithMetricsEnabled(false).
		WithSyncWrites(false)
}

func (s *Store) checkSchema() error {
	var version string
	err := s.view(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keyVersion))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { version = string(v); return nil })
	})
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		err := s.update(func(txn *badger.Txn) error { return txn.Set([]byte(keyVersion), []byte(schemaVersion)) })
		if errors.Is(err, ErrNoSpace) {
			return nil // written once the store is writable
		}
		return err
	case err != nil:
		return err
	case version != schemaVersion:
		return fmt.Errorf("store: %s has schema version %q, this Outpost reads %q", s.root, version, schemaVersion)
	}
	return nil
}

// Close flushes access times and closes Badger, which writes its memtable
// out: on a nearly full disk the last ballast goes first to make room for
// that. Sessions must be finished.
func (s *Store) Close() error {
	first := false
	s.closeOnce.Do(func() { first = true })
	if !first {
		return nil
	}
	close(s.stop)
	s.wg.Wait()
	err := s.flushAccess()
	if errors.Is(err, ErrNoSpace) {
		err = nil // the access times of the last minutes are lost, nothing else
	}
	if s.measure() < s.space.floor {
		s.releaseBallast(2)
	}
	if !s.readOnly.Load() && s.measure() < minFreeToOpen {
		s.emergencyFree(s.space.floor) // Badger's flush needs pages the disk must give
	}
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	defer s.lock.Close() // last: the next process may start when Badger is closed
	if free := s.measure(); free < minFreeToOpen && !s.readOnly.Load() {
		// Flushing now would fault on a page the disk cannot give. The
		// memtable's log is complete in the page cache; the next Open
		// replays it.
		s.log.Error("the disk is full: leaving the metadata log for the next start to replay", "root", s.root, "free", free)
		return err
	}
	return errors.Join(err, s.db.Close())
}

// Root is the data directory.
func (s *Store) Root() string { return s.root }

// blobPath is where a committed blob lives: blobs/sha256/ab/abcdef….
func (s *Store) blobPath(d v1.Hash) string {
	return filepath.Join(s.root, "blobs", d.Algorithm, d.Hex[:2], d.Hex)
}

// view runs fn in a read-only transaction.
func (s *Store) view(fn func(*badger.Txn) error) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return s.db.View(fn)
}

// Manifest is a stored manifest. Bytes are shared: never modify them.
type Manifest struct {
	Digest    v1.Hash
	MediaType string
	Size      int64
	Bytes     []byte
}

type manifestMeta struct {
	MediaType    string   `json:"mediaType"`
	Size         int64    `json:"size"`
	Children     []string `json:"children,omitempty"`
	Subject      string   `json:"subject,omitempty"`
	ArtifactType string   `json:"artifactType,omitempty"`
}

type blobMeta struct {
	Size int64 `json:"size"`
}

type tagMeta struct {
	Digest    string `json:"digest"`
	CheckedAt int64  `json:"checkedAt"` // unix nanoseconds of the last upstream confirmation
}

// Tag is a tag's target and when upstream last confirmed it.
type Tag struct {
	Digest    v1.Hash
	CheckedAt time.Time
}

func getJSON(txn *badger.Txn, key []byte, v any) error {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	return item.Value(func(b []byte) error { return json.Unmarshal(b, v) })
}

func (s *Store) get(key []byte, v any) error {
	return s.view(func(txn *badger.Txn) error { return getJSON(txn, key, v) })
}

// Manifest returns a stored manifest by digest. Small manifests come from
// a bounded in-memory cache, shared by every caller, so that serving one
// to many clients costs no copy per client.
func (s *Store) Manifest(d v1.Hash) (Manifest, error) {
	m, f, err := s.openManifest(d, true, true)
	if f != nil {
		f.Close()
	}
	return m, err
}

// OpenManifest returns a stored manifest for serving: with its bytes if it
// is small enough to be kept in memory (shared: never modify them), or
// else with its file open (the caller closes it; Bytes is nil), so that a
// large manifest is sent like a blob, not copied per client.
func (s *Store) OpenManifest(d v1.Hash) (Manifest, *os.File, error) {
	return s.openManifest(d, false, true)
}

// PeekManifest is Manifest without counting as a use: for bookkeeping (a
// mirror job checking what it has), which must neither make content look
// fresh to LRU eviction nor write access times.
func (s *Store) PeekManifest(d v1.Hash) (Manifest, error) {
	m, f, err := s.openManifest(d, true, false)
	if f != nil {
		f.Close()
	}
	return m, err
}

func (s *Store) openManifest(d v1.Hash, wantBytes, touch bool) (Manifest, *os.File, error) {
	if m, ok := s.manifests.get(d); ok {
		if touch {
			s.Touch(d)
		}
		return m, nil, nil
	}
	gen := s.manifests.gen.Load()
	var meta manifestMeta
	if err := s.get(manifestKey(d.String()), &meta); err != nil {
		return Manifest{}, nil, err
	}
	m := Manifest{Digest: d, MediaType: meta.MediaType, Size: meta.Size}
	f, err := os.Open(s.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return Manifest{}, nil, ErrNotFound // removed since the look-up
	}
	if err != nil {
		return Manifest{}, nil, fmt.Errorf("store: manifest %s: %w", d, err)
	}
	if touch {
		s.Touch(d)
	}
	if !wantBytes && meta.Size > maxCachedManifest {
		return m, f, nil
	}
	defer f.Close()
	if m.Bytes, err = io.ReadAll(io.LimitReader(f, meta.Size+1)); err != nil {
		return Manifest{}, nil, fmt.Errorf("store: manifest %s: %w", d, err)
	}
	if int64(len(m.Bytes)) != meta.Size {
		return Manifest{}, nil, fmt.Errorf("store: manifest %s: the file has %d bytes, its key says %d", d, len(m.Bytes), meta.Size)
	}
	s.manifests.put(m, gen)
	return m, nil, nil
}

// Blob opens a stored blob (or manifest, which is content too) for reading.
// The caller closes the file. A file under blobs/ is always complete and
// verified (it got there by rename after the digest check), so the hot path
// needs no metadata lookup; one whose metadata a crash or failed commit lost
// is still correct to serve, and the next Open sweeps it.
func (s *Store) Blob(d v1.Hash) (*os.File, int64, error) {
	f, err := os.Open(s.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("store: blob %s: %w", d, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("store: blob %s: %w", d, err)
	}
	s.Touch(d)
	return f, fi.Size(), nil
}

// Tag returns what a tag points at.
func (s *Store) Tag(repo, tag string) (Tag, error) {
	key := tagKey(repo, tag)
	if t, ok := s.tags.get(string(key)); ok {
		return t, nil
	}
	gen := s.tags.gen.Load()
	var meta tagMeta
	if err := s.get(key, &meta); err != nil {
		return Tag{}, err
	}
	d, err := v1.NewHash(meta.Digest)
	if err != nil {
		return Tag{}, fmt.Errorf("store: tag %s:%s: %w", repo, tag, err)
	}
	t := Tag{Digest: d, CheckedAt: time.Unix(0, meta.CheckedAt)}
	s.tags.put(string(key), t, gen)
	return t, nil
}

// ConfirmTag records that upstream confirmed repo:tag → d at the given time.
// The manifest must already be stored (invariant 3).
func (s *Store) ConfirmTag(repo, tag string, d v1.Hash, at time.Time) error {
	key := tagKey(repo, tag)
	defer s.tags.written(string(key))
	return s.update(func(txn *badger.Txn) error {
		if !exists(txn, manifestKey(d.String())) {
			return fmt.Errorf("store: confirm %s:%s: manifest %s: %w", repo, tag, d, ErrNotFound)
		}
		return setJSON(txn, key, tagMeta{Digest: d.String(), CheckedAt: at.UnixNano()})
	})
}

// DeleteTag forgets a tag (upstream said it is gone). Content stays.
func (s *Store) DeleteTag(repo, tag string) error {
	key := tagKey(repo, tag)
	defer s.tags.written(string(key))
	return s.update(func(txn *badger.Txn) error { return txn.Delete(key) })
}

// Tags lists a repository's tags, sorted.
func (s *Store) Tags(repo string) ([]string, error) {
	return s.scan(tagPrefix(repo), func(k []byte) string { return lastPart(k) })
}

// Repositories lists every repository with stored content, sorted.
func (s *Store) Repositories() ([]string, error) {
	return s.scan([]byte(prefixRepo), func(k []byte) string { return string(k[len(prefixRepo):]) })
}

// Referrers lists the descriptors of manifests in repo whose subject is d.
func (s *Store) Referrers(repo string, d v1.Hash) ([]v1.Descriptor, error) {
	var out []v1.Descriptor
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 16, Prefix: referrerPrefix(repo, d.String())})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var desc v1.Descriptor
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &desc) }); err != nil {
				return err
			}
			out = append(out, desc)
		}
		return nil
	})
	return out, err
}

func (s *Store) scan(prefix []byte, name func([]byte) string) ([]string, error) {
	var out []string
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out = append(out, name(it.Item().Key()))
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}

func setJSON(txn *badger.Txn, key []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return txn.Set(key, b)
}

// badgerLogger routes Badger's chatter into slog; its info lines are debug for us.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(f string, a ...any) {
	l.log.Error(fmt.Sprintf(f, a...), "component", "badger")
}
func (l badgerLogger) Warningf(f string, a ...any) {
	l.log.Warn(fmt.Sprintf(f, a...), "component", "badger")
}
func (l badgerLogger) Infof(f string, a ...any) {
	l.log.Debug(fmt.Sprintf(f, a...), "component", "badger")
}
func (l badgerLogger) Debugf(f string, a ...any) {}

// HasRepository reports whether anything of repo is stored.
func (s *Store) HasRepository(repo string) bool {
	found := false
	s.view(func(txn *badger.Txn) error {
		found = exists(txn, repoKey(repo))
		return nil
	})
	return found
}

// HasManifest reports whether d is stored as a manifest (not only as a
// blob with the same bytes).
func (s *Store) HasManifest(d v1.Hash) bool {
	found := false
	s.view(func(txn *badger.Txn) error {
		found = exists(txn, manifestKey(d.String()))
		return nil
	})
	return found && s.HasBlob(d)
}

// HasBlob reports whether content d is stored.
func (s *Store) HasBlob(d v1.Hash) bool {
	_, err := os.Stat(s.blobPath(d))
	return err == nil
}

// Linked reports whether repo references content d: fetched through it,
// pushed to it, or referenced by one of its manifests. Every blob and
// manifest request asks, so links found are remembered (see linkCache).
func (s *Store) Linked(repo string, d v1.Hash) bool {
	key := string(linkKey(repo, d.String()))
	if s.links.has(key) {
		return true
	}
	found := false
	s.view(func(txn *badger.Txn) error {
		found = exists(txn, []byte(key))
		return nil
	})
	if found {
		s.links.add(key)
	}
	return found
}

// Link records that repo references content d (upstream confirmed it for
// repo), stored or still being written. A link to content that is not
// stored is harmless: the content is fetched when asked for.
func (s *Store) Link(repo string, d v1.Hash) error {
	return s.update(func(txn *badger.Txn) error {
		if err := txn.Set(linkKey(repo, d.String()), nil); err != nil {
			return err
		}
		return txn.Set(repoKey(repo), nil)
	})
}
