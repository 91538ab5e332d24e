package store

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/dgraph-io/badger/v4"
)

// The last resort for a disk so full that Badger could not open or close
// cleanly (both ballast files eaten by something else): cached content is a
// cache, the metadata's consistency is not. The largest blob files are
// removed until there is room, a marker file says so, and the next Open
// with room to write drops the keys whose files are gone (and the tags of
// manifests that are gone), so every invariant holds again. What was
// removed is fetched again when asked for.

const repairMarker = "repair-needed"

// emergencyFree removes blob files, largest first, until need bytes are
// free. It reports whether it removed any.
func (s *Store) emergencyFree(need int64) bool {
	type file struct {
		path string
		size int64
	}
	var files []file
	filepath.WalkDir(filepath.Join(s.root, "blobs"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				files = append(files, file{path, fi.Size()})
			}
		}
		return nil
	})
	sort.Slice(files, func(i, j int) bool { return files[i].size > files[j].size })
	var removed, bytes int64
	for _, f := range files {
		if s.measure() >= need {
			break
		}
		if os.Remove(f.path) == nil {
			removed, bytes = removed+1, bytes+f.size
		}
	}
	if removed == 0 {
		return false
	}
	os.WriteFile(filepath.Join(s.root, repairMarker), nil, 0o640)
	s.log.Error("the disk is full: removed cached blobs to keep the metadata consistent; they are fetched again when asked for",
		"root", s.root, "files", removed, "bytes", bytes)
	return true
}

// dirtyLog reports whether Badger has memtable logs to replay (it was not
// closed cleanly), which a read-only open refuses.
func dirtyLog(metaDir string) bool {
	entries, _ := os.ReadDir(metaDir)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".mem") {
			if fi, err := e.Info(); err == nil && fi.Size() > 0 {
				return true
			}
		}
	}
	return false
}

// repairMissing drops the keys of content whose file is gone, after an
// emergency removal. It runs in Open, on a writable store, before anything
// can write.
func (s *Store) repairMissing() error {
	marker := filepath.Join(s.root, repairMarker)
	if _, err := os.Stat(marker); err != nil || s.metaWritable() != nil {
		return nil // nothing to repair, or no room to write: at a later start
	}
	gone := map[string]bool{}
	var keys [][]byte
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			key := string(it.Item().Key())
			var digest string
			switch {
			case strings.HasPrefix(key, prefixBlob), strings.HasPrefix(key, prefixManifest):
				digest = key[2:]
			default:
				continue
			}
			alg, hex, ok := strings.Cut(digest, ":")
			if !ok || len(hex) < 2 {
				continue
			}
			if _, err := os.Stat(filepath.Join(s.root, "blobs", alg, hex[:2], hex)); errors.Is(err, fs.ErrNotExist) {
				gone[digest] = true
				keys = append(keys, []byte(key), accessKey(digest))
			}
		}
		// Tags and referrer entries of manifests that are gone.
		for _, prefix := range []string{prefixTag, prefixReferrer} {
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: prefix == prefixTag, Prefix: []byte(prefix)})
			for it.Rewind(); it.Valid(); it.Next() {
				key := it.Item().KeyCopy(nil)
				if prefix == prefixReferrer {
					if gone[lastPart(key)] {
						keys = append(keys, key)
					}
					continue
				}
				var tm tagMeta
				if it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &tm) }) == nil && gone[tm.Digest] {
					keys = append(keys, key)
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.dbMu.RLock()
	wb := s.db.NewWriteBatch()
	for _, k := range keys {
		if err = wb.Delete(k); err != nil {
			break
		}
	}
	if err == nil {
		err = wb.Flush()
	} else {
		wb.Cancel()
	}
	s.dbMu.RUnlock()
	if err != nil {
		return err
	}
	s.log.Info("dropped the metadata of content removed when the disk was full", "root", s.root, "contents", len(gone))
	return os.Remove(marker)
}
