package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
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
	s      *Store
	id     string
	dir    string
	kind   Kind
	origin string

	mu      sync.Mutex
	done    bool
	files   map[string]string      // digest → verified part file to publish
	writers map[string]*BlobWriter // digest → this session's blob writers
	meta    map[string]any         // badger key → value (JSON) to set
	empties map[string]bool        // badger keys to set with an empty value
	needs   map[string]bool        // digests that must be stored when the commit's metadata is written
}

type sessionInfo struct {
	Kind    Kind      `json:"kind"`
	Origin  string    `json:"origin,omitempty"`
	Created time.Time `json:"created"`
}

// Begin starts a session. origin says what it is for (a fill's repository,
// a mirror job's name); followers of its writes can read it.
func (s *Store) Begin(kind Kind, origin string) (*Session, error) {
	id := uuid.NewString()
	dir := filepath.Join(s.root, syncDir, id)
	if err := os.Mkdir(dir, 0o750); err != nil {
		return nil, fmt.Errorf("store: begin: %w", err)
	}
	info, _ := json.Marshal(sessionInfo{Kind: kind, Origin: origin, Created: s.now()})
	if err := os.WriteFile(filepath.Join(dir, "session.json"), info, 0o640); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("store: begin: %w", err)
	}
	s.openSession(id)
	return s.session(id, dir, kind, origin), nil
}

func (s *Store) session(id, dir string, kind Kind, origin string) *Session {
	return &Session{s: s, id: id, dir: dir, kind: kind, origin: origin, files: map[string]string{},
		writers: map[string]*BlobWriter{}, meta: map[string]any{}, empties: map[string]bool{}, needs: map[string]bool{}}
}

// openSession notes that session id is in use in this process; it reports
// false if it already was.
func (s *Store) openSession(id string) bool {
	s.sessionsMu.Lock()
	defer s.sessionsMu.Unlock()
	if s.sessions[id] {
		return false
	}
	s.sessions[id] = true
	return true
}

func (s *Store) closeSession(id string) {
	s.sessionsMu.Lock()
	delete(s.sessions, id)
	s.sessionsMu.Unlock()
}

// Resume reopens an interrupted session of kind sync, import or upload by
// its id. Its part files are continued where they stopped (see Blob);
// metadata staged before the interruption is gone and must be staged again.
// A session can be open only once at a time.
func (s *Store) Resume(id string) (*Session, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, fmt.Errorf("store: resume %q: not a session id", id)
	}
	dir := filepath.Join(s.root, syncDir, id)
	b, err := os.ReadFile(filepath.Join(dir, "session.json"))
	if err != nil {
		return nil, fmt.Errorf("store: resume %s: %w", id, ErrNotFound)
	}
	var info sessionInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("store: resume %s: %w", id, err)
	}
	if info.Kind == KindFill {
		return nil, fmt.Errorf("store: resume %s: fill sessions are not resumable", id)
	}
	if !s.openSession(id) {
		return nil, fmt.Errorf("store: resume %s: the session is open already", id)
	}
	return s.session(id, dir, info.Kind, info.Origin), nil
}

// SessionInfo describes a session left on disk by an interruption.
type SessionInfo struct {
	ID      string
	Kind    Kind
	Origin  string
	Created time.Time
}

// Interrupted lists the resumable sessions of kind on disk that are not
// open in this process, oldest first: a mirror job resumes its own (by
// Origin) and aborts the rest.
func (s *Store) Interrupted(kind Kind) ([]SessionInfo, error) {
	entries, err := os.ReadDir(filepath.Join(s.root, syncDir))
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var out []SessionInfo
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(s.root, syncDir, e.Name(), "session.json"))
		if err != nil {
			continue
		}
		var info sessionInfo
		if json.Unmarshal(b, &info) != nil || info.Kind != kind {
			continue
		}
		s.sessionsMu.Lock()
		open := s.sessions[e.Name()]
		s.sessionsMu.Unlock()
		if !open {
			out = append(out, SessionInfo{ID: e.Name(), Kind: info.Kind, Origin: info.Origin, Created: info.Created})
		}
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// ID is the session's UUID (an upload's UUID, later).
func (ss *Session) ID() string { return ss.id }

// stage hands a verified part to the session for Commit; a session that has
// ended takes nothing.
func (ss *Session) stage(d v1.Hash, path string, meta blobMeta) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.done {
		return ErrSessionDone
	}
	ss.files[d.String()] = path
	ss.meta[prefixBlob+d.String()] = meta
	return nil
}

// unregister removes a write from the store's registry, if it is still the
// one registered for its digest.
func (s *Store) unregister(digest string, in *inflight) {
	s.writingMu.Lock()
	if s.writing[digest] == in {
		delete(s.writing, digest)
	}
	s.writingMu.Unlock()
}

// Link records that repo references content d (a blob or manifest).
func (ss *Session) Link(repo string, d v1.Hash) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.link(repo, d.String())
}

func (ss *Session) link(repo, digest string) {
	ss.empties[string(linkKey(repo, digest))] = true
	ss.empties[string(repoKey(repo))] = true
}

// Manifest stages a manifest of repo and returns its digest. Its children,
// subject and artifactType are recorded for later GC, pins and referrers,
// and its children are linked to repo: what a repository's manifests
// reference may be served under its name.
func (ss *Session) Manifest(repo string, b []byte, mediaType string) (v1.Hash, error) {
	d, size, err := v1.SHA256(bytesReader(b))
	if err != nil {
		return v1.Hash{}, err
	}
	meta, subject, err := parseManifest(b, mediaType)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("store: manifest %s: %w", d, err)
	}
	if err := ss.s.admit(size); err != nil {
		return v1.Hash{}, err
	}
	meta.Size = size
	path := filepath.Join(ss.dir, "manifest-"+d.Hex+".part")
	if err := writeFileSync(path, b); err != nil {
		os.Remove(path)
		return v1.Hash{}, fmt.Errorf("store: %w", err)
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.done {
		os.Remove(path)
		return v1.Hash{}, ErrSessionDone
	}
	ss.files[d.String()] = path
	ss.meta[string(manifestKey(d.String()))] = meta.manifestMeta
	if subject != nil {
		ss.meta[string(referrerKey(repo, subject.String(), d.String()))] = v1.Descriptor{
			MediaType: types.MediaType(mediaType), Size: size, Digest: d,
			ArtifactType: meta.ArtifactType, Annotations: meta.annotations,
		}
	}
	ss.link(repo, d.String())
	for _, child := range meta.Children {
		ss.link(repo, child)
	}
	return d, nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// Need makes the commit fail unless content d is stored (or staged here)
// when its metadata is written: a mirror's image names blobs that other
// sessions published, and a tag must never point at an image one of whose
// blobs went meanwhile (invariant 3, extended to what the image needs).
func (ss *Session) Need(d v1.Hash) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.needs[d.String()] = true
}

// Tag points repo:tag at manifest d, confirmed upstream now.
func (ss *Session) Tag(repo, tag string, d v1.Hash) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.meta[string(tagKey(repo, tag))] = tagMeta{Digest: d.String(), CheckedAt: ss.s.now().UnixNano()}
}

// Commit publishes everything staged: files are renamed into blobs/ and their
// directories fsynced, then all metadata is written in one transaction. The
// digests' locks are held throughout, so a removal of the same content
// cannot interleave (see Remove). If the transaction fails, the files this
// commit put in place are taken back, so that none is left without a key.
func (ss *Session) Commit() error {
	ss.mu.Lock()
	if ss.done {
		ss.mu.Unlock()
		return ErrSessionDone
	}
	// Once done, nothing more is staged: the commit works on a snapshot,
	// without holding mu while writers still running are ended.
	ss.done = true
	files, writers := ss.files, ss.writers
	ss.mu.Unlock()
	defer ss.s.closeSession(ss.id)
	defer os.RemoveAll(ss.dir)
	for _, w := range writers {
		w.abandon(ErrAborted, false) // unfinished at commit: not published
	}
	defer ss.releaseWrites(writers)

	if err := ss.s.metaWritable(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	if err := ss.checkTags(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	digests := make([]string, 0, len(files))
	for digest := range files {
		digests = append(digests, digest)
	}
	unlock := ss.s.locks.lock(digests)
	defer unlock()
	existing := ss.s.stored(digests)
	var published []string
	takeBack := func() {
		for _, digest := range published {
			if !existing[digest] {
				d, _ := v1.NewHash(digest)
				os.Remove(ss.s.blobPath(d))
			}
		}
	}
	dirs := map[string]bool{}
	for digest, part := range files {
		d, _ := v1.NewHash(digest)
		dst := ss.s.blobPath(d)
		created, err := makeDirs(filepath.Dir(dst))
		if err == nil {
			err = ss.publish(writers[digest], part, dst)
		}
		if err != nil {
			takeBack()
			return fmt.Errorf("store: commit: %w", err)
		}
		published = append(published, digest)
		dirs[filepath.Dir(dst)] = true
		for _, dir := range created { // a new directory's entry lives in its parent
			dirs[filepath.Dir(dir)] = true
		}
	}
	for dir := range dirs {
		if err := syncDirectory(dir); err != nil {
			takeBack()
			return fmt.Errorf("store: commit: %w", err)
		}
	}
	added, addedBytes, err := ss.writeMeta()
	for key, v := range ss.meta {
		if _, isTag := v.(tagMeta); isTag {
			ss.s.tags.written(key)
		}
	}
	if err != nil {
		takeBack()
		return fmt.Errorf("store: commit: %w", err)
	}
	ss.s.stats.count.Add(added)
	ss.s.stats.bytes.Add(addedBytes)
	return nil
}

// checkTags refuses a commit whose tags point at a manifest that is neither
// staged nor stored (invariant 3), before anything is published.
func (ss *Session) checkTags() error {
	return ss.s.view(func(txn *badger.Txn) error {
		for key, v := range ss.meta {
			tm, ok := v.(tagMeta)
			if !ok {
				continue
			}
			if _, staged := ss.meta[prefixManifest+tm.Digest]; !staged && !exists(txn, manifestKey(tm.Digest)) {
				return fmt.Errorf("tag %s: manifest %s: %w", key, tm.Digest, ErrNotFound)
			}
		}
		return nil
	})
}

// stored reports which of digests already have their content key.
func (s *Store) stored(digests []string) map[string]bool {
	have := map[string]bool{}
	s.view(func(txn *badger.Txn) error {
		for _, d := range digests {
			if exists(txn, blobKey(d)) || exists(txn, manifestKey(d)) {
				have[d] = true
			}
		}
		return nil
	})
	return have
}

// publish renames a part into place; followers of its write (w, nil for a
// manifest) reopen the new path from then on.
func (ss *Session) publish(w *BlobWriter, part, dst string) error {
	if w != nil {
		w.in.mu.Lock()
		defer w.in.mu.Unlock()
	}
	if err := os.Rename(part, dst); err != nil {
		return err
	}
	if w != nil {
		w.in.path = dst
	}
	return nil
}

// releaseWrites takes a session's writes out of the registry, failing any
// that did not finish. It runs before the digests are unlocked.
func (ss *Session) releaseWrites(writers map[string]*BlobWriter) {
	for digest, w := range writers {
		w.in.fail(ErrAborted) // a no-op for a write that finished
		ss.s.unregister(digest, w.in)
	}
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
				if _, staged := ss.meta[prefixManifest+tm.Digest]; !staged && !exists(txn, manifestKey(tm.Digest)) {
					return fmt.Errorf("tag %s: manifest %s: %w", key, tm.Digest, ErrNotFound)
				}
			}
			if err := setJSON(txn, []byte(key), v); err != nil {
				return err
			}
		}
		for digest := range ss.needs {
			_, staged := ss.files[digest]
			if !staged && !exists(txn, blobKey(digest)) && !exists(txn, manifestKey(digest)) {
				return fmt.Errorf("%s is needed and no longer stored: %w", digest, ErrNotFound)
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

// update runs fn in a read-write transaction, if the disk has room for
// metadata. Outpost's own writers take turns (a transaction is well under a
// millisecond), so they never lose a conflict to each other; a conflict
// with anything else is retried.
func (s *Store) update(fn func(*badger.Txn) error) error {
	if err := s.metaWritable(); err != nil {
		return err
	}
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
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

// Abort drops everything staged and fails writes in progress. It is a
// no-op after Commit.
func (ss *Session) Abort() { ss.end(true) }

// Close ends a resumable session without publishing or removing anything:
// its part files stay for a later Resume.
func (ss *Session) Close() { ss.end(false) }

func (ss *Session) end(remove bool) {
	ss.mu.Lock()
	if ss.done {
		ss.mu.Unlock()
		return
	}
	ss.done = true
	writers := ss.writers
	ss.mu.Unlock()
	for _, w := range writers {
		w.abandon(ErrAborted, !remove)
	}
	ss.releaseWrites(writers)
	if remove {
		os.RemoveAll(ss.dir)
	}
	ss.s.closeSession(ss.id)
}

func syncDirectory(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
