package store

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
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
	files   map[string]string    // digest → verified part file to publish
	writes  map[string]*inflight // digest → this session's registered writes
	meta    map[string]any       // badger key → value (JSON) to set
	empties map[string]bool      // badger keys to set with an empty value
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
	return s.session(id, dir, kind, origin), nil
}

func (s *Store) session(id, dir string, kind Kind, origin string) *Session {
	return &Session{s: s, id: id, dir: dir, kind: kind, origin: origin, files: map[string]string{},
		writes: map[string]*inflight{}, meta: map[string]any{}, empties: map[string]bool{}}
}

// Resume reopens an interrupted session of kind sync, import or upload by
// its id. Its part files are continued where they stopped (see Blob);
// metadata staged before the interruption is gone and must be staged again.
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
	return s.session(id, dir, info.Kind, info.Origin), nil
}

// ID is the session's UUID (an upload's UUID, later).
func (ss *Session) ID() string { return ss.id }

// BlobWriter writes one blob into a session. It hashes what it writes; Close
// checks digest and size and fsyncs, and only then does the blob count.
// Followers (see Pending) read what it has written as it goes.
type BlobWriter struct {
	ss        *Session
	in        *inflight
	f         *os.File
	path      string
	h         *asyncHash
	want      v1.Hash
	size      int64
	n         int64
	checked   int64 // n at the last free-space check
	promised  int64 // bytes counted in the store's promised space
	finished  bool
	finishErr error
}

// Blob starts writing content d of the given size (-1 if not yet known)
// into the session. If another session is writing d, it returns a handle
// on that write to follow instead (w is nil; Release the handle). If d is
// stored, it returns ErrExists. In a resumed session, a part file left by
// the interruption is continued: Written says from where.
func (ss *Session) Blob(d v1.Hash, size int64) (w *BlobWriter, other *Pending, err error) {
	h, err := hasher(d)
	if err != nil {
		return nil, nil, err
	}
	s := ss.s
	s.writingMu.Lock()
	defer s.writingMu.Unlock()
	if in := s.writing[d.String()]; in != nil {
		if in.owner == ss {
			return nil, nil, fmt.Errorf("store: %s is already being written in this session", d)
		}
		in.attach()
		return nil, &Pending{in: in}, nil
	}
	if s.HasBlob(d) {
		return nil, nil, ErrExists
	}
	if err := s.admit(max(size, 0)); err != nil {
		return nil, nil, err
	}
	path := filepath.Join(ss.dir, d.Algorithm+"-"+d.Hex+".part")
	f, n, err := openPart(path, h, size)
	if err != nil {
		return nil, nil, fmt.Errorf("store: %w", err)
	}
	in := newInflight(d, ss, path, size)
	in.written = n
	s.writing[d.String()] = in
	ss.mu.Lock()
	ss.writes[d.String()] = in
	ss.mu.Unlock()
	// openPart fed the bytes of a resumed part to h: hashing continues.
	w = &BlobWriter{ss: ss, in: in, f: f, path: path, h: newAsyncHash(h), want: d, size: size, n: n, checked: n}
	w.promise()
	return w, nil, nil
}

// openPart opens a part file for writing at its end, feeding what it
// already holds (a resumed write) to h. A part longer than size starts over.
func openPart(path string, h hash.Hash, size int64) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, 0, err
	}
	n, err := io.Copy(h, f)
	if err == nil && size >= 0 && n > size {
		h.Reset()
		n, err = 0, f.Truncate(0)
		if err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, n, nil
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

// promise counts what is left to write against the free space, so that
// writes starting meanwhile leave room for it.
func (w *BlobWriter) promise() {
	left := int64(0)
	if w.size > w.n && !w.finished {
		left = w.size - w.n
	}
	w.ss.s.space.promised.Add(left - w.promised)
	w.promised = left
}

// SetSize announces the total size once the writer learns it (from
// upstream's response), for followers and for the free-space check.
func (w *BlobWriter) SetSize(size int64) error {
	if w.size >= 0 && size != w.size {
		return fmt.Errorf("%w: %s is %d bytes, not %d", ErrSizeMismatch, w.want, w.size, size)
	}
	if size >= 0 && w.n > size {
		return fmt.Errorf("%w: %s: %d bytes written, more than %d", ErrSizeMismatch, w.want, w.n, size)
	}
	if size >= 0 && w.size < 0 {
		if err := w.ss.s.admit(size - w.n); err != nil {
			return err
		}
	}
	w.size = size
	w.promise()
	w.in.mu.Lock()
	w.in.size, w.in.sized = size, true
	w.in.cond.Broadcast()
	w.in.mu.Unlock()
	return nil
}

// Written is how many bytes have been written so far (for a resumed part,
// including those written before the interruption).
func (w *BlobWriter) Written() int64 { return w.n }

// Interest reports how many parties follow or wait for this write, and
// since when nobody has, if nobody does.
func (w *BlobWriter) Interest() (n int, idleSince time.Time) {
	w.in.mu.Lock()
	defer w.in.mu.Unlock()
	return w.in.interest, w.in.idle
}

// Progress reports how much has been written of how much (-1: unknown).
// Unlike Written, it may be called from any goroutine.
func (w *BlobWriter) Progress() (written, size int64) {
	w.in.mu.Lock()
	defer w.in.mu.Unlock()
	return w.in.written, w.in.size
}

// Pending returns a handle on this write, for the writer's own clients.
func (w *BlobWriter) Pending() *Pending {
	w.in.attach()
	return &Pending{in: w.in}
}

func (w *BlobWriter) Write(p []byte) (int, error) {
	if err := w.write(p); err != nil {
		return 0, err
	}
	w.h.Write(p)
	w.advance(len(p))
	return len(p), nil
}

// ReadFrom copies r into the blob, handing each buffer to the hasher
// instead of copying it again.
func (w *BlobWriter) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		buf := getBuffer()
		n, rerr := r.Read(*buf) // what has arrived goes to followers at once
		if n > 0 {
			if err := w.write((*buf)[:n]); err != nil {
				putBuffer(buf)
				return total, err
			}
			*buf = (*buf)[:n]
			w.h.give(buf)
			w.advance(n)
			total += int64(n)
		} else {
			putBuffer(buf)
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// write puts p in the part file, checking the size and, every few MiB,
// the free space.
func (w *BlobWriter) write(p []byte) error {
	if w.finished {
		return ErrSessionDone
	}
	if w.size >= 0 && w.n+int64(len(p)) > w.size {
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrSizeMismatch, w.want, w.size)
	}
	if w.n-w.checked >= spaceCheckEvery {
		w.checked = w.n
		s := w.ss.s
		if free := s.measure(); free < s.space.reserve {
			return fmt.Errorf("%w: %d bytes free in %s, keeping %d for metadata", ErrNoSpace, free, s.root, s.space.reserve)
		}
	}
	if _, err := w.f.Write(p); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// advance publishes n more written bytes to followers.
func (w *BlobWriter) advance(n int) {
	w.n += int64(n)
	if w.promised > 0 {
		k := min(int64(n), w.promised)
		w.promised -= k
		w.ss.s.space.promised.Add(-k)
	}
	w.in.mu.Lock()
	w.in.written = w.n
	w.in.cond.Broadcast()
	w.in.mu.Unlock()
}

// Close verifies the blob, releases the last byte to followers, fsyncs it
// and hands it to the session for Commit. On any error the part file is
// removed, followers fail, and nothing is staged.
func (w *BlobWriter) Close() error {
	if w.finished {
		return w.finishErr
	}
	err := w.verify()
	if err == nil {
		w.in.mu.Lock()
		w.in.verified = true // followers get their last byte now, not after the fsync
		w.in.cond.Broadcast()
		w.in.mu.Unlock()
		err = w.f.Sync()
	}
	err = errors.Join(err, w.f.Close())
	if err != nil {
		w.fail(err)
		return err
	}
	w.finished = true
	w.promise()
	w.in.mu.Lock()
	w.in.done = true
	w.in.cond.Broadcast()
	w.in.mu.Unlock()
	w.ss.stage(w.want, w.path, prefixBlob+w.want.String(), blobMeta{Size: w.n})
	return nil
}

// Discard drops a blob that cannot or need not be finished; followers get
// err (ErrAborted if nil).
func (w *BlobWriter) Discard(err error) {
	if w.finished {
		return
	}
	if err == nil {
		err = ErrAborted
	}
	w.h.Sum() // stops the hashing goroutine
	w.f.Close()
	w.fail(err)
}

func (w *BlobWriter) fail(err error) {
	w.finished, w.finishErr = true, err
	w.promise()
	w.in.fail(err) // before the file goes: a follower joining now gets err, not ENOENT
	w.ss.unregister(w.want.String(), w.in)
	os.Remove(w.path)
}

func (w *BlobWriter) verify() error {
	if w.size >= 0 && w.n != w.size {
		w.h.Sum()
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

// unregister removes a write of this session from the store's registry.
func (ss *Session) unregister(digest string, in *inflight) {
	ss.s.writingMu.Lock()
	if ss.s.writing[digest] == in {
		delete(ss.s.writing, digest)
	}
	ss.s.writingMu.Unlock()
	ss.mu.Lock()
	delete(ss.writes, digest)
	ss.mu.Unlock()
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

// Tag points repo:tag at manifest d, confirmed upstream now.
func (ss *Session) Tag(repo, tag string, d v1.Hash) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.meta[string(tagKey(repo, tag))] = tagMeta{Digest: d.String(), CheckedAt: ss.s.now().UnixNano()}
}

// Commit publishes everything staged: files are renamed into blobs/ and their
// directories fsynced, then all metadata is written in one transaction. The
// digests' locks are held throughout, so a removal of the same content
// cannot interleave (see Remove).
func (ss *Session) Commit() error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.done {
		return ErrSessionDone
	}
	ss.done = true
	defer os.RemoveAll(ss.dir)
	defer ss.releaseWrites(nil)
	if err := ss.s.metaWritable(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}

	digests := make([]string, 0, len(ss.files))
	for digest := range ss.files {
		digests = append(digests, digest)
	}
	unlock := ss.s.locks.lock(digests)
	defer unlock()
	dirs := map[string]bool{}
	for digest, part := range ss.files {
		d, _ := v1.NewHash(digest)
		dst := ss.s.blobPath(d)
		created, err := makeDirs(filepath.Dir(dst))
		if err != nil {
			return fmt.Errorf("store: commit: %w", err)
		}
		if err := ss.publish(digest, part, dst); err != nil {
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
	for key, v := range ss.meta {
		if _, isTag := v.(tagMeta); isTag {
			ss.s.tags.written(key)
		}
	}
	if err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	ss.s.stats.count.Add(added)
	ss.s.stats.bytes.Add(addedBytes)
	return nil
}

// publish renames a part into place; followers of that write reopen the
// new path from then on.
func (ss *Session) publish(digest, part, dst string) error {
	in := ss.writes[digest]
	if in != nil {
		in.mu.Lock()
		defer in.mu.Unlock()
	}
	if err := os.Rename(part, dst); err != nil {
		return err
	}
	if in != nil {
		in.path = dst
	}
	return nil
}

// releaseWrites takes this session's writes out of the registry, failing
// any that did not finish.
func (ss *Session) releaseWrites(err error) {
	for digest, in := range ss.writes {
		in.fail(errors.Join(err, ErrAborted))
		ss.s.writingMu.Lock()
		if ss.s.writing[digest] == in {
			delete(ss.s.writing, digest)
		}
		ss.s.writingMu.Unlock()
	}
	clear(ss.writes)
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
	defer ss.mu.Unlock()
	if ss.done {
		return
	}
	ss.done = true
	ss.releaseWrites(nil)
	if remove {
		os.RemoveAll(ss.dir)
	}
}

func syncDirectory(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// digestLocks order publication against removal per digest. Digests map
// onto a fixed set of mutexes; several are taken in index order.
type digestLocks [256]sync.Mutex

// stripe maps a digest to a lock by the first byte of its hex part.
func stripe(digest string) int {
	_, hex, _ := strings.Cut(digest, ":")
	if len(hex) < 2 {
		return 0
	}
	return int(unhex(hex[0])<<4 | unhex(hex[1]))
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return 0
}

// lock takes the locks of digests and returns their release.
func (l *digestLocks) lock(digests []string) func() {
	seen := map[int]bool{}
	var idx []int
	for _, d := range digests {
		if i := stripe(d); !seen[i] {
			seen[i] = true
			idx = append(idx, i)
		}
	}
	sort.Ints(idx)
	for _, i := range idx {
		l[i].Lock()
	}
	return func() {
		for _, i := range idx {
			l[i].Unlock()
		}
	}
}
