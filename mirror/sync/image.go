package sync

import (
	"errors"
	"fmt"
	"io"
	stdsync "sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/outpost-oci/outpost/store"
)

// maxDepth bounds nested indexes (an index of indexes of images).
const maxDepth = 3

// image syncs one tag's content: its manifests into one store session
// (committed with the tag), its blobs each in a session of its own.
type image struct {
	pass *pass // the run: job, context, gate, report
	tag  string
	sess *store.Session
	repo string // upstream's name for the repository
	key  string // the store's: registry/repo

	mu         stdsync.Mutex    // rep's counters, from parallel blob downloads
	downloaded int              // manifests and blobs fetched for this image
	staged     map[v1.Hash]bool // manifests staged
	blobSeen   map[v1.Hash]bool // blobs stored or staged by this image (a layer may repeat)
}

// sync stages the manifest tag points at (d, or whatever upstream says
// when d is zero), the wanted children of an index, every blob they need
// and, if wanted, their referrers. It returns the manifest's digest.
func (im *image) sync(tag string, d v1.Hash) (v1.Hash, error) {
	ref := d.String()
	if d.Hex == "" {
		ref = tag // upstream gave no digest on HEAD: GET by tag (checked by mirror)
	}
	b, mt, d, err := im.manifest(ref, d)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := im.tree(b, mt, d, 0); err != nil {
		return v1.Hash{}, err
	}
	if im.pass.j.opts.Referrers {
		if err := im.referrers(d); err != nil {
			return v1.Hash{}, fmt.Errorf("referrers of %s: %w", d, err)
		}
	}
	return d, nil
}

// tree stages manifest d with its wanted children and their blobs, the
// children first.
func (im *image) tree(b []byte, mt string, d v1.Hash, depth int) error {
	if im.staged[d] {
		return nil
	}
	children, blobs, err := parse(b, mt)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d, err)
	}
	for _, c := range children {
		if !wantPlatform(im.pass.j.opts.Platforms, c.Platform) {
			continue
		}
		if depth+1 >= maxDepth {
			return fmt.Errorf("manifest %s: indexes nested more than %d deep", d, maxDepth)
		}
		cb, cmt, _, err := im.manifest(c.Digest.String(), c.Digest)
		if err != nil {
			return err
		}
		if err := im.tree(cb, cmt, c.Digest, depth+1); err != nil {
			return err
		}
	}
	if err := im.blobs(blobs); err != nil {
		return err
	}
	for _, bl := range blobs {
		im.sess.Need(bl.Digest) // published by their own sessions: still there at the commit?
	}
	got, err := im.sess.Manifest(im.key, b, mt)
	if err != nil {
		return err
	}
	if d.Algorithm == got.Algorithm && got != d {
		return fmt.Errorf("manifest %s hashes to %s", d, got)
	}
	if im.staged == nil {
		im.staged = map[v1.Hash]bool{}
	}
	im.staged[d] = true
	return nil
}

// manifest returns manifest ref (digest d, or a tag when d is zero): the
// stored bytes if the store has them, otherwise upstream's (checked).
func (im *image) manifest(ref string, d v1.Hash) ([]byte, string, v1.Hash, error) {
	st := im.pass.j.opts.Store
	if d.Hex != "" && st.HasManifest(d) {
		if m, err := st.PeekManifest(d); err == nil {
			return m.Bytes, m.MediaType, d, nil
		}
		// Unreadable (removed meanwhile): fetch it again.
	}
	if err := im.pass.j.waitRateLimit(im.pass.ctx, im.repo, ref); err != nil {
		return nil, "", v1.Hash{}, err
	}
	var b []byte
	var desc v1.Descriptor
	err := im.pass.j.patiently(im.pass.ctx, "manifest", func() (err error) {
		b, desc, err = im.pass.j.opts.Upstream.Manifest(im.pass.ctx, im.repo, ref)
		return err
	})
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	if d.Hex == "" {
		d = desc.Digest
	}
	im.count(1, 0, int64(len(b)))
	return b, string(desc.MediaType), d, nil
}

func (im *image) count(manifests, blobs int, bytes int64) {
	im.mu.Lock()
	defer im.mu.Unlock()
	im.downloaded += manifests + blobs
	im.pass.rep.Manifests += manifests
	im.pass.rep.Blobs += blobs
	im.pass.rep.Bytes += bytes
	im.pass.j.opts.Metrics.bytes(im.pass.j.opts.Name, bytes)
}

// blobs makes sure every blob is stored or staged in the session, a few
// at a time.
func (im *image) blobs(descs []v1.Descriptor) error {
	sem := make(chan struct{}, im.pass.j.opts.Parallel)
	var wg stdsync.WaitGroup
	var mu stdsync.Mutex
	var first error
	for _, desc := range descs {
		if im.blobSeen[desc.Digest] || im.pass.j.opts.Store.HasBlob(desc.Digest) {
			continue
		}
		if im.blobSeen == nil {
			im.blobSeen = map[v1.Hash]bool{}
		}
		im.blobSeen[desc.Digest] = true
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := im.blob(desc); err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("blob %s: %w", desc.Digest, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

// blob makes sure one blob is stored: downloaded in a session of its own
// and published as soon as it is verified (a blob alone makes nothing
// visible), so no other download ever waits on this image's commit. If
// someone else (a fill, another job) is downloading it, it waits for that
// download instead. An interrupted download of it is resumed.
func (im *image) blob(desc v1.Descriptor) error {
	st := im.pass.j.opts.Store
	if st.HasBlob(desc.Digest) {
		return nil
	}
	sess, resumed, err := im.blobSession(im.pass.j.origin(im.key, im.tag, desc.Digest.String()))
	if err != nil {
		return err
	}
	for attempt := 0; attempt < 3; attempt++ {
		if st.HasBlob(desc.Digest) {
			break
		}
		if p := st.Join(desc.Digest); p != nil {
			p.Release() // waiting must not count as a follower (see await)
			if err := im.await(desc.Digest); err != nil {
				sess.Close()
				return err
			}
			continue // stored now, or the other download failed: try ourselves
		}
		// The upstream's slot before the write is registered: a write
		// waiting for one would hold back every pull that joined it.
		release, err := im.slot()
		if err != nil {
			sess.Close()
			return err
		}
		w, other, err := sess.Blob(desc.Digest, desc.Size)
		if w == nil {
			release()
			switch {
			case errors.Is(err, store.ErrExists):
				sess.Abort() // a resumed part is of no use now
				return nil
			case err != nil:
				sess.Close()
				return err
			}
			other.Release()
			continue // someone started it just now: wait for them above
		}
		err = im.download(w, desc)
		if err == nil {
			err = sess.Commit()
		}
		release()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch) || errors.Is(err, store.ErrNoSpace):
			sess.Abort() // nothing worth keeping, or no room to keep it
		default:
			sess.Close() // ends the write now, keeps the part: the next run resumes it
		}
		return err
	}
	if resumed {
		sess.Close() // its part may still serve a later run
	} else {
		sess.Abort()
	}
	if st.HasBlob(desc.Digest) {
		return nil
	}
	return errors.New("another download of it kept failing")
}

// slot takes one of the upstream's download slots (shared by its jobs).
func (im *image) slot() (release func(), err error) {
	slots := im.pass.j.opts.Slots
	if slots == nil {
		return func() {}, nil
	}
	select {
	case slots <- struct{}{}:
		return func() { <-slots }, nil
	case <-im.pass.ctx.Done():
		return nil, im.pass.ctx.Err()
	}
}

// blobSession resumes the interrupted session of origin, or begins one.
func (im *image) blobSession(origin string) (*store.Session, bool, error) {
	st := im.pass.j.opts.Store
	if id, ok := im.pass.claim(origin); ok {
		sess, err := st.Resume(id)
		if err == nil {
			return sess, true, nil
		}
		im.pass.j.log.Warn("interrupted download not resumed", "session", id, "err", err)
	}
	sess, err := st.Begin(store.KindSync, origin)
	return sess, false, err
}

// heldLimit bounds how long someone else's write of a blob may go on being
// "in progress" without its blob being stored, before this image gives up
// on it for this run (a fill whose client left, an import that publishes
// at its own end).
const heldLimit = 30 * time.Minute

// await waits until someone else's write of d is stored or ends. It looks
// every 200 ms instead of holding the write: a handle would count as a
// follower, and a job waiting is not a client (it must not lift the other
// job's cap, nor keep a fill nobody else wants alive).
func (im *image) await(d v1.Hash) error {
	st := im.pass.j.opts.Store
	deadline := time.Now().Add(heldLimit)
	for !st.HasBlob(d) {
		p := st.Join(d)
		if p == nil {
			return nil // ended without storing it: the caller tries
		}
		p.Release()
		if time.Now().After(deadline) {
			return fmt.Errorf("blob %s: another download of it has not finished in %v", d, heldLimit)
		}
		if err := sleep(im.pass.ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// download fetches the blob into w from where a resumed part file stops,
// under the job's bandwidth cap and window.
func (im *image) download(w *store.BlobWriter, desc v1.Descriptor) error {
	off := w.Written()
	if desc.Size >= 0 && off == desc.Size {
		// Complete before the interruption: verify it.
		if err := w.Close(); err != nil {
			return err
		}
		im.count(0, 1, 0)
		return nil
	}
	if off > 0 {
		im.pass.j.log.Info("resuming an interrupted blob download", "repo", im.key, "digest", desc.Digest, "from", off)
	}
	var body io.ReadCloser
	var size int64
	err := im.pass.j.patiently(im.pass.ctx, "blob", func() (err error) {
		body, size, err = im.pass.j.opts.Upstream.Blob(im.pass.ctx, im.repo, desc.Digest, off, desc.Size)
		return err
	})
	if err != nil {
		return err
	}
	defer body.Close()
	if size >= 0 && desc.Size >= 0 && size != desc.Size {
		w.Discard(store.ErrSizeMismatch)
		return fmt.Errorf("%w: upstream says %d bytes, the manifest %d", store.ErrSizeMismatch, size, desc.Size)
	}
	if err := w.SetSize(size); err != nil {
		return err
	}
	// While someone else follows the write (a pull waits for this blob),
	// the job's cap and window do not hold it back.
	followed := func() bool { n, _ := w.Interest(); return n > 0 }
	var r io.Reader = im.pass.gate.reader(im.pass.ctx, body, followed)
	var prog BlobProgress
	if p := im.pass.j.opts.Progress; p != nil {
		prog = p.BlobStarted(im.key, desc.Digest, size, off)
		r = &progressReader{r: r, p: prog}
	}
	n, err := w.ReadFrom(r)
	im.count(0, 0, n)
	if err == nil {
		err = w.Close()
	}
	if prog != nil {
		prog.Done(err)
	}
	if err != nil {
		return err
	}
	im.count(0, 1, 0)
	return nil
}

type progressReader struct {
	r io.Reader
	p BlobProgress
}

func (pr *progressReader) Read(b []byte) (int, error) {
	n, err := pr.r.Read(b)
	if n > 0 {
		pr.p.Add(n)
	}
	return n, err
}

// referrers stages the manifests whose subject is d (signatures, SBOMs,
// attestations) with their blobs, all platforms.
func (im *image) referrers(d v1.Hash) error {
	var descs []v1.Descriptor
	err := im.pass.j.patiently(im.pass.ctx, "referrers", func() (err error) {
		descs, err = im.pass.j.opts.Upstream.Referrers(im.pass.ctx, im.repo, d)
		return err
	})
	if err != nil {
		return err
	}
	for _, desc := range descs {
		if !wantedReferrer(desc) {
			continue
		}
		b, mt, rd, err := im.manifest(desc.Digest.String(), desc.Digest)
		if err != nil {
			return err
		}
		if err := im.tree(b, mt, rd, 0); err != nil {
			return err
		}
	}
	return nil
}

// wantedReferrer reports whether a referrer is fetched: manifests and
// indexes (signatures, SBOMs, attestations); other types are left alone.
func wantedReferrer(desc v1.Descriptor) bool {
	mt := types.MediaType(desc.MediaType)
	return mt.IsImage() || mt.IsIndex()
}
