package store

import (
	"encoding/json"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
)

// stats counts stored content for metrics and, later, the disk budget.
type stats struct {
	count atomic.Int64
	bytes atomic.Int64
}

// Stats returns how many blobs and manifests the store holds and their size.
func (s *Store) Stats() (count, bytes int64) {
	return s.stats.count.Load(), s.stats.bytes.Load()
}

// loadStats counts content keys once at Open; commits keep it current.
func (s *Store) loadStats() error {
	return s.view(func(txn *badger.Txn) error {
		for _, prefix := range []string{prefixBlob, prefixManifest} {
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 64, Prefix: []byte(prefix)})
			for it.Rewind(); it.Valid(); it.Next() {
				var v struct {
					Size int64 `json:"size"`
				}
				if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &v) }); err != nil {
					it.Close()
					return err
				}
				s.stats.count.Add(1)
				s.stats.bytes.Add(v.Size)
			}
			it.Close()
		}
		return nil
	})
}
