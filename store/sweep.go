package store

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// sessionTTL is how long an interrupted resumable session is kept.
const sessionTTL = 24 * time.Hour

// sweepSessions removes what a crash can leave in .sync: fill sessions
// and stale sessions of other kinds. It runs in Open before Badger, which
// it does not need.
func (s *Store) sweepSessions() error {
	entries, err := os.ReadDir(filepath.Join(s.root, syncDir))
	if err != nil {
		return err
	}
	for _, e := range entries {
		dir := filepath.Join(s.root, syncDir, e.Name())
		if s.keepSession(dir) {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		s.log.Info("removed interrupted session", "session", e.Name())
	}
	for i := range ballastNames {
		os.Remove(s.ballastPath(i) + ".tmp")
	}
	return nil
}

// sweepBlobs removes blob files that no key makes visible (invariant 2).
// It runs in Open, before anything can write.
func (s *Store) sweepBlobs() error {
	blobs := filepath.Join(s.root, "blobs")
	return s.view(func(txn *badger.Txn) error {
		return filepath.WalkDir(blobs, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(blobs, path)
			parts := strings.Split(filepath.ToSlash(rel), "/") // alg/ab/hex
			if len(parts) == 3 {
				digest := parts[0] + ":" + parts[2]
				if exists(txn, blobKey(digest)) || exists(txn, manifestKey(digest)) {
					return nil
				}
			}
			s.log.Info("removed unreferenced blob file", "path", rel)
			return os.Remove(path)
		})
	})
}

func (s *Store) keepSession(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "session.json"))
	if err != nil {
		return false
	}
	var info sessionInfo
	if json.Unmarshal(b, &info) != nil {
		return false
	}
	return info.Kind != KindFill && s.now().Sub(info.Created) < sessionTTL
}

func exists(txn *badger.Txn, key []byte) bool {
	_, err := txn.Get(key)
	return !errors.Is(err, badger.ErrKeyNotFound) && err == nil
}
