package store

import (
	"strconv"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Access times feed LRU eviction. They are kept at hour resolution and
// written in batches, so that a busy cache does not wear out flash with one
// write per request.
const (
	accessResolution = time.Hour
	accessFlushEvery = 10 * time.Minute
)

type accessLog struct {
	mu      sync.Mutex
	pending map[string]int64 // digest → unix seconds, rounded down to the hour
	noted   sync.Map         // v1.Hash → the hour last queued, to skip repeats
}

// Touch notes that content d was read now. After the first read of an hour
// it costs one map look-up, no lock.
func (s *Store) Touch(d v1.Hash) {
	hour := s.now().Truncate(accessResolution).Unix()
	if last, ok := s.access.noted.Load(d); ok && last.(int64) == hour {
		return
	}
	s.access.noted.Store(d, hour)
	s.access.mu.Lock()
	s.access.pending[d.String()] = hour
	s.access.mu.Unlock()
}

// LastAccess returns when content d was last read, at hour resolution.
func (s *Store) LastAccess(d v1.Hash) (time.Time, error) {
	s.access.mu.Lock()
	hour, ok := s.access.pending[d.String()]
	s.access.mu.Unlock()
	if ok {
		return time.Unix(hour, 0), nil
	}
	var at int64
	if err := s.get(accessKey(d.String()), &at); err != nil {
		return time.Time{}, err
	}
	return time.Unix(at, 0), nil
}

func (s *Store) flushAccess() error {
	s.access.mu.Lock()
	pending := s.access.pending
	s.access.pending = map[string]int64{}
	s.access.mu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	if err := s.metaWritable(); err != nil {
		s.access.mu.Lock() // keep them for a later flush
		for digest, hour := range pending {
			if _, newer := s.access.pending[digest]; !newer {
				s.access.pending[digest] = hour
			}
		}
		s.access.mu.Unlock()
		return err
	}
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for digest, hour := range pending {
		if err := wb.Set(accessKey(digest), []byte(strconv.FormatInt(hour, 10))); err != nil {
			return err
		}
	}
	// Forget digests not read this hour, so the map stays as small as the
	// working set.
	current := s.now().Truncate(accessResolution).Unix()
	s.access.noted.Range(func(k, v any) bool {
		if v.(int64) < current {
			s.access.noted.Delete(k)
		}
		return true
	})
	return wb.Flush()
}

func (s *Store) background() {
	defer s.wg.Done()
	t := time.NewTicker(accessFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			if err := s.flushAccess(); err != nil {
				s.log.Warn("flushing access times", "err", err)
			}
		}
	}
}
