package store

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// A pin says that an owner (a mirror job, later imports and local pushes)
// keeps repo:tag and the image it points at: eviction, when the store gets
// a budget, passes over pinned images. A pin is per tag, so when the tag
// moves, the image it left is no longer pinned by it.

// Pin is one kept tag.
type Pin struct {
	Owner  string // "mirror:<name>"
	Repo   string // registry/repository, as the store names it
	Tag    string
	Digest v1.Hash   // the manifest the tag pointed at when pinned
	Since  time.Time // first pinned
}

type pinMeta struct {
	Digest string `json:"digest"`
	Since  int64  `json:"since"` // unix nanoseconds
}

// Pin stages a pin of repo:tag → d for owner, made visible with the rest
// of the session's commit.
func (ss *Session) Pin(owner, repo, tag string, d v1.Hash) {
	since := ss.s.now()
	if old, err := ss.s.pin(owner, repo, tag); err == nil && !old.Since.IsZero() {
		since = old.Since
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.meta[string(pinKey(owner, repo, tag))] = pinMeta{Digest: d.String(), Since: since.UnixNano()}
}

func (s *Store) pin(owner, repo, tag string) (Pin, error) {
	var m pinMeta
	if err := s.get(pinKey(owner, repo, tag), &m); err != nil {
		return Pin{}, err
	}
	return pinOf(owner, repo, tag, m)
}

func pinOf(owner, repo, tag string, m pinMeta) (Pin, error) {
	d, err := v1.NewHash(m.Digest)
	if err != nil {
		return Pin{}, fmt.Errorf("store: pin %s %s:%s: %w", owner, repo, tag, err)
	}
	return Pin{Owner: owner, Repo: repo, Tag: tag, Digest: d, Since: time.Unix(0, m.Since)}, nil
}

// Pins lists owner's pins, or everyone's if owner is "".
func (s *Store) Pins(owner string) ([]Pin, error) {
	prefix := []byte(prefixPin)
	if owner != "" {
		prefix = pinPrefix(owner)
	}
	var out []Pin
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			parts := strings.Split(strings.TrimPrefix(string(it.Item().Key()), prefixPin), "\x00")
			if len(parts) != 3 {
				continue
			}
			var m pinMeta
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &m) }); err != nil {
				return err
			}
			p, err := pinOf(parts[0], parts[1], parts[2], m)
			if err != nil {
				return err
			}
			out = append(out, p)
		}
		return nil
	})
	return out, err
}

// unpinBatch keeps one transaction well inside Badger's limits on
// Pi-sized memtables.
const unpinBatch = 1000

// Unpin drops the given pins (the content becomes ordinary cache content).
func (s *Store) Unpin(pins []Pin) error {
	for len(pins) > 0 {
		batch := pins[:min(len(pins), unpinBatch)]
		pins = pins[len(batch):]
		err := s.update(func(txn *badger.Txn) error {
			for _, p := range batch {
				if err := txn.Delete(pinKey(p.Owner, p.Repo, p.Tag)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// EnsurePin pins repo:tag → d for owner unless it already is (so an
// unchanged tag costs no write): content a mirror finds already cached by a
// pull becomes its own.
func (s *Store) EnsurePin(owner, repo, tag string, d v1.Hash) error {
	old, err := s.pin(owner, repo, tag)
	if err == nil && old.Digest == d {
		return nil
	}
	since := s.now()
	if err == nil {
		since = old.Since
	}
	return s.update(func(txn *badger.Txn) error {
		return setJSON(txn, pinKey(owner, repo, tag), pinMeta{Digest: d.String(), Since: since.UnixNano()})
	})
}
