package store

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// CheckInvariants verifies the store's crash invariants (see doc.go): every
// content key has a complete file whose bytes hash to its digest, every file
// has a key, every tag points at a stored manifest. Tests call it after each
// scenario; a later `outpost verify` can too.
func (s *Store) CheckInvariants() error {
	var errs []error
	keyed := map[string]bool{}
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			key := string(it.Item().Key())
			switch {
			case strings.HasPrefix(key, prefixBlob), strings.HasPrefix(key, prefixManifest):
				digest := key[2:]
				keyed[digest] = true
				var size struct {
					Size int64 `json:"size"`
				}
				if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &size) }); err != nil {
					return err
				}
				if err := s.checkFile(digest, size.Size); err != nil {
					errs = append(errs, fmt.Errorf("key %s: %w", key, err))
				}
			case strings.HasPrefix(key, prefixTag):
				var tm tagMeta
				if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &tm) }); err != nil {
					return err
				}
				if !exists(txn, manifestKey(tm.Digest)) {
					errs = append(errs, fmt.Errorf("tag %q points at missing manifest %s", key, tm.Digest))
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	blobs := filepath.Join(s.root, "blobs")
	err = filepath.WalkDir(blobs, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(blobs, path)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if len(parts) != 3 || !keyed[parts[0]+":"+parts[2]] {
			errs = append(errs, fmt.Errorf("blob file %s has no key", rel))
		}
		return nil
	})
	return errors.Join(append(errs, err)...)
}

func (s *Store) checkFile(digest string, size int64) error {
	d, err := v1.NewHash(digest)
	if err != nil {
		return err
	}
	f, err := os.Open(s.blobPath(d))
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("file has %d bytes, key says %d", n, size)
	}
	if d.Algorithm == "sha256" && fmt.Sprintf("%x", h.Sum(nil)) != d.Hex {
		return fmt.Errorf("file content does not hash to %s", d)
	}
	return nil
}
