package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Remove deletes content from the store: its keys first, then (after
// Badger is synced) its files, never the other way round (invariant 4),
// each digest under its lock so that a session publishing the same content
// meanwhile cannot lose its file to the unlink. Readers with the file open
// keep reading it. Links, tags and referrers that pointed at it are the
// caller's business (GC removes them first); a blob read under a link
// whose content is gone is simply fetched again.
func (s *Store) Remove(digests []v1.Hash) error {
	keys := make([]string, len(digests))
	for i, d := range digests {
		keys[i] = d.String()
	}
	unlock := s.locks.lock(keys)
	defer unlock()
	var removed, removedBytes int64
	err := s.update(func(txn *badger.Txn) error {
		removed, removedBytes = 0, 0
		for _, k := range keys {
			for _, key := range [][]byte{blobKey(k), manifestKey(k)} {
				var size struct {
					Size int64 `json:"size"`
				}
				switch err := getJSON(txn, key, &size); {
				case errors.Is(err, ErrNotFound):
					continue
				case err != nil:
					return err
				}
				removed, removedBytes = removed+1, removedBytes+size.Size
				if err := txn.Delete(key); err != nil {
					return err
				}
			}
			if err := txn.Delete(accessKey(k)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: remove: %w", err)
	}
	s.dbMu.RLock()
	err = s.db.Sync()
	s.dbMu.RUnlock()
	if err != nil {
		return fmt.Errorf("store: remove: %w", err)
	}
	s.stats.count.Add(-removed)
	s.stats.bytes.Add(-removedBytes)
	s.access.mu.Lock()
	for _, d := range digests {
		delete(s.access.pending, d.String()) // no access time for content that is gone
		s.access.noted.Delete(d)
	}
	s.access.mu.Unlock()
	for _, d := range digests {
		s.manifests.forget(d)
		if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("store: remove: %w", err)
		}
	}
	return nil
}
