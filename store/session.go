package store

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/uuid"
)

const syncDir = ".sync"

// Kind says what a session is for; it decides what Open keeps after a crash.
type Kind string

const (
	KindFill   Kind = "fill"   // a pull-through fill: removed on start
	KindSync   Kind = "sync"   // a mirror job: kept for resume
	KindImport Kind = "import" // an air-gap import: kept for resume
	KindUpload Kind = "upload" // a push upload: kept for resume
)

var (
	// ErrDigestMismatch means written content does not hash to its digest.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch means written content is not of the announced size.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrSessionDone means the session was already committed or aborted.
	ErrSessionDone = errors.New("session finished")
)

// Session stages writes under .sync/<uuid> and publishes them together on
// Commit. Always `defer sess.Abort()`: it is a no-op after Commit.
type Session struct {
	s    *Store
	id   string
	dir  string
	kind Kind

	mu      sync.Mutex
	done    bool
	files   map[string]string // digest → verified part file to publish
	meta    map[string]any    // badger key → value (JSON) to set
	empties map[string]bool   // badger keys to set with an empty value
}

type sessionInfo struct {
	Kind    Kind      `json:"kind"`
	Created time.Time `json:"created"`
}

// Begin starts a session.
func (s *Store) Begin(kind Kind) (*Session, error) {
	id := uuid.NewString()
	dir := filepath.Join(s.root, syncDir, id)
	if err := os.Mkdir(dir, 0o750); err != nil {
		return nil, fmt.Errorf("store: begin: %w", err)
	}
	info, _ := json.Marshal(sessionInfo{Kind: kind, Created: s.now()})
	if err := os.WriteFile(filepath.Join(dir, "session.json"), info, 0o640); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("store: begin: %w", err)
	}
	return &Session{s: s, id: id, dir: dir, kind: kind,
		files: map[string]string{}, meta: map[string]any{}, empties: map[string]bool{}}, nil
}

// ID is the session's UUID (an upload's UUID, later).
func (ss *Session) ID() string { return ss.id }

// BlobWriter writes one blob into a session. It hashes what it writes; Close
// checks digest and size and fsyncs, and only then does the blob count.
type BlobWriter struct {
	ss   *Session
	f    *os.File
	path string
	h    *asyncHash
	want v1.Hash
	size int64
	n    int64
}

// Blob starts writing content with the given digest and size (-1 if not yet known).
func (ss *Session) Blob(d v1.Hash, size int64) (*BlobWriter, error) {
	h, err := hasher(d)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(ss.dir, d.Algorithm+"-"+d.Hex+".part")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return &BlobWriter{ss: ss, f: f, path: path, h: newAsyncHash(h), want: d, size: size}, nil
}

func hasher(d v1.Hash) (hash.Hash, error) {
	switch d.Algorithm {
	case "sha256":
		return sha256.New(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("store: unsupported digest algorithm %q", d.Algorithm)
}

// Path is the part file being written; readers may tail it while it grows.
func (w *BlobWriter) Path() string { return w.path }

func (w *BlobWriter) Write(p []byte) (int, error) {
	if w.size >= 0 && w.n+int64(len(p)) > w.size {
		return 0, fmt.Errorf("%w: %s is longer than %d bytes", ErrSizeMismatch, w.want, w.size)
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Written is how many bytes have been written so far.
func (w *BlobWriter) Written() int64 {
	return w.n
}

// Close verifies and fsyncs the blob and hands it to the session for Commit.
// On any error the part file is removed and nothing is staged.
func (w *BlobWriter) Close() error {
	err := w.Verify()
	if err == nil {
		err = w.f.Sync()
	}
	err = errors.Join(err, w.f.Close())
	if err != nil {
		os.Remove(w.path)
		return err
	}
	w.ss.stage(w.want, w.path, prefixBlob+w.want.String(), blobMeta{Size: w.n})
	return nil
}

// Discard drops a blob that is not wanted after all.
func (w *BlobWriter) Discard() {
	w.h.Sum() // stops the hashing goroutine
	w.f.Close()
	os.Remove(w.path)
}

// Verify checks what was written against the digest and size. The cache
// calls it before Close to release the last byte to waiting clients
// without waiting for the fsync.
func (w *BlobWriter) Verify() error {
	if w.size >= 0 && w.n != w.size {
		return fmt.Errorf("%w: %s: got %d bytes, want %d", ErrSizeMismatch, w.want, w.n, w.size)
	}
	got := fmt.Sprintf("%x", w.h.Sum())
	if got != w.want.Hex {
		return fmt.Errorf("%w: want %s, content hashes to %s:%s", ErrDigestMismatch, w.want, w.want.Algorithm, got)
	}
	return nil
}

func (ss *Session) stage(d v1.Hash, path, key string, meta any) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.files[d.String()] = path
	ss.meta[key] = meta
}

// Link records that repo references content d (a blob or manifest).
func (ss *Session) Link(repo string, d v1.Hash) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.empties[string(linkKey(repo, d.String()))] = true
	ss.empties[string(repoKey(repo))] = true
}

// Manifest stages a manifest of repo and returns its digest. Its children,
// subject and artifactType are recorded for later GC, pins and referrers.
func (ss *Session) Manifest(repo string, b []byte, mediaType string) (v1.Hash, error) {
	d, size, err := v1.SHA256(bytesReader(b))
	if err != nil {
		return v1.Hash{}, err
	}
	meta, subject, err := parseManifest(b, mediaType)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("store: manifest %s: %w", d, err)
	}
	meta.Size = size
	w, err := ss.Blob(d, size)
	if err != nil {
		return v1.Hash{}, err
	}
	if _, err := w.Write(b); err != nil {
		w.Discard()
		return v1.Hash{}, err
	}
	if err := w.Close(); err != nil {
		return v1.Hash{}, err
	}
	ss.mu.Lock()
	delete(ss.meta, prefixBlob+d.String()) // a manifest is recorded as m/, not b/
	ss.meta[string(manifestKey(d.String()))] = meta.manifestMeta
	if subject != nil {
		ss.meta[string(referrerKey(repo, subject.String(), d.String()))] = v1.Descriptor{
			MediaType: types.MediaType(mediaType), Size: size, Digest: d,
			ArtifactType: meta.ArtifactType, Annotations: meta.annotations,
		}
	}
	ss.mu.Unlock()
	ss.Link(repo, d)
	return d, nil
}

// Tag points repo:tag at manifest d, confirmed upstream now.
func (ss *Session) Tag(repo, tag string, d v1.Hash) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.meta[string(tagKey(repo, tag))] = tagMeta{Digest: d.String(), CheckedAt: ss.s.now().UnixNano()}
}

// Commit publishes everything staged: files are renamed into blobs/ and their
// directories fsynced, then all metadata is written in one transaction.
func (ss *Session) Commit() error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.done {
		return ErrSessionDone
	}
	ss.done = true
	defer os.RemoveAll(ss.dir)

	dirs := map[string]bool{}
	for digest, part := range ss.files {
		d, _ := v1.NewHash(digest)
		dst := ss.s.blobPath(d)
		created, err := makeDirs(filepath.Dir(dst))
		if err != nil {
			return fmt.Errorf("store: commit: %w", err)
		}
		if err := os.Rename(part, dst); err != nil {
			return fmt.Errorf("store: commit: %w", err)
		}
		dirs[filepath.Dir(dst)] = true
		for _, dir := range created { // a new directory's entry lives in its parent
			dirs[filepath.Dir(dir)] = true
		}
	}
	for dir := range dirs {
		if err := syncDirectory(dir); err != nil {
			return fmt.Errorf("store: commit: %w", err)
		}
	}
	added, addedBytes, err := ss.writeMeta()
	if err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	ss.s.stats.count.Add(added)
	ss.s.stats.bytes.Add(addedBytes)
	return nil
}

// commitRetries bounds retries of a metadata transaction that lost a
// conflict. Every write here is idempotent, so a retry is safe.
const commitRetries = 10

// writeMeta writes the staged metadata in one transaction, retrying on
// conflicts. It returns how much new content it recorded.
func (ss *Session) writeMeta() (added, addedBytes int64, err error) {
	err = ss.s.update(func(txn *badger.Txn) error {
		added, addedBytes = 0, 0 // the closure runs again after a conflict
		for key, v := range ss.meta {
			switch m := v.(type) {
			case blobMeta:
				if !exists(txn, []byte(key)) {
					added, addedBytes = added+1, addedBytes+m.Size
				}
			case manifestMeta:
				if !exists(txn, []byte(key)) {
					added, addedBytes = added+1, addedBytes+m.Size
				}
			}
			if tm, ok := v.(tagMeta); ok {
				// Invariant 3: the tag's manifest exists, staged here or stored before.
				if _, staged := ss.meta[prefixManifest+tm.Digest]; !staged {
					if _, err := txn.Get(manifestKey(tm.Digest)); err != nil {
						return fmt.Errorf("tag %s: manifest %s: %w", key, tm.Digest, ErrNotFound)
					}
				}
			}
			if err := setJSON(txn, []byte(key), v); err != nil {
				return err
			}
		}
		for key := range ss.empties {
			if err := txn.Set([]byte(key), nil); err != nil {
				return err
			}
		}
		return nil
	})
	return added, addedBytes, err
}

// update runs fn in a read-write transaction. Outpost's own writers take
// turns (a transaction is well under a millisecond), so they never lose a
// conflict to each other; a conflict with anything else is retried.
func (s *Store) update(fn func(*badger.Txn) error) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	var err error
	for try := range commitRetries {
		if err = s.db.Update(fn); !errors.Is(err, badger.ErrConflict) {
			return err
		}
		time.Sleep(time.Duration(rand.Int64N(int64(try+1) * int64(time.Millisecond))))
	}
	return err
}

// makeDirs is os.MkdirAll that also returns the directories it created, so
// that their parents can be fsynced.
func makeDirs(dir string) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		missing = append(missing, d)
	}
	return missing, os.MkdirAll(dir, 0o750)
}

// Abort drops everything staged. It is a no-op after Commit.
func (ss *Session) Abort() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.done {
		return
	}
	ss.done = true
	os.RemoveAll(ss.dir)
}

func syncDirectory(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
