package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// Disk space. A full disk must never take Outpost down: Badger writes its
// logs and tables through memory maps and dies with SIGBUS when a page of
// a file cannot be allocated. So the store keeps free space for metadata:
//
//   - No new content is written while free space is below the reserve; a
//     write checks before it starts (counting what writes in flight have
//     yet to write) and again every few MiB while it writes.
//   - No metadata is written while free space is below the floor (a
//     quarter of the reserve, at least 4 MiB): enough for Badger to rotate
//     a memtable, flush it and compact a small tree.
//   - Two ballast files (a quarter of the reserve each) hold space back for
//     the day something else fills the disk. Below the floor the first is
//     deleted, giving the running Badger room; the second is deleted only
//     to close or open the store, so that Badger can flush its memtable on
//     the way down and replay its log on the way up even if the first was
//     eaten too. Both are written again once there is space.
//   - Opened on a disk too full even for that, the store runs read-only,
//     serving what it has, and reopens itself for writing when space
//     comes back.

// ErrNoSpace means the disk is too full to store more.
var ErrNoSpace = errors.New("the disk is too full to store new content")

// DefaultReserve is the free space kept for metadata when Options leave it
// unset: two memtable logs, a flush and the compaction of a Pi-sized tree
// (see badgerOptions), with room to spare.
const DefaultReserve = 64 << 20

const (
	minFloor        = 4 << 20
	spaceCheckEvery = 8 << 20 // bytes written between free-space checks
)

// The ballast files: the running one, and the one kept for closing and
// opening.
var ballastNames = [2]string{"ballast.running", "ballast.restart"}

type space struct {
	reserve  int64
	floor    int64
	ballast  int64
	promised atomic.Int64 // bytes writes in flight announced but have not written yet
	low      atomic.Bool  // below the reserve: new content refused
	refusing atomic.Bool  // the last write of new content was refused for lack of space
	critical atomic.Bool  // below the floor: metadata refused
	free     atomic.Int64 // last measured free bytes
}

func newSpace(reserve int64) space {
	if reserve <= 0 {
		reserve = DefaultReserve
	}
	return space{reserve: reserve, floor: max(reserve/4, minFloor), ballast: reserve / 4}
}

// measure reads the free space and updates the state, logging changes.
func (s *Store) measure() int64 {
	free, err := freeBytes(s.root)
	if err != nil {
		s.log.Warn("cannot read free disk space", "root", s.root, "err", err)
		return s.space.free.Load()
	}
	s.space.free.Store(free)
	low, critical := free < s.space.reserve, free < s.space.floor
	if was := s.space.low.Swap(low); was != low {
		if low {
			s.log.Error("free disk space is below the reserve: new content is not cached until space is freed; cached content is still served",
				"root", s.root, "free", free, "reserve", s.space.reserve)
		} else {
			s.log.Info("free disk space is back above the reserve: caching new content again", "root", s.root, "free", free)
		}
	}
	if was := s.space.critical.Swap(critical); was != critical && critical {
		s.log.Error("the disk is nearly full: metadata writes stop too", "root", s.root, "free", free, "floor", s.space.floor)
	}
	return free
}

// admit checks that n more bytes of content (0: unknown) may be written.
func (s *Store) admit(n int64) error {
	if s.readOnly.Load() {
		return fmt.Errorf("%w: the store is read-only until space is freed in %s", ErrNoSpace, s.root)
	}
	free := s.measure()
	if free-s.space.promised.Load()-n < s.space.reserve {
		if !s.space.refusing.Swap(true) && !s.space.low.Load() {
			s.log.Error("not enough free disk space: new content is not cached until space is freed; cached content is still served",
				"root", s.root, "free", free, "needed", n, "reserve", s.space.reserve)
		}
		return fmt.Errorf("%w: %d bytes free in %s, keeping %d for metadata", ErrNoSpace, free, s.root, s.space.reserve)
	}
	if s.space.refusing.Swap(false) && !s.space.low.Load() {
		s.log.Info("there is free disk space again: caching new content", "root", s.root, "free", free)
	}
	return nil
}

// metaWritable checks that metadata may be written, first freeing the
// ballast if the disk has come close to full.
func (s *Store) metaWritable() error {
	if s.readOnly.Load() {
		return fmt.Errorf("%w: the store is read-only until space is freed in %s", ErrNoSpace, s.root)
	}
	if s.measure() >= s.space.floor {
		return nil
	}
	if s.releaseBallast(1) && s.measure() >= s.space.floor {
		return nil
	}
	return fmt.Errorf("%w: %d bytes free in %s", ErrNoSpace, s.space.free.Load(), s.root)
}

// Space reports the last measured free bytes, the reserve, and whether new
// content is being refused for lack of space.
func (s *Store) Space() (free, reserve int64, full bool) {
	return s.space.free.Load(), s.space.reserve, s.space.low.Load() || s.space.refusing.Load() || s.readOnly.Load()
}

func (s *Store) ballastPath(i int) string { return filepath.Join(s.root, ballastNames[i]) }

// releaseBallast deletes up to n ballast files (1: the running one, 2:
// both); it reports whether it deleted any.
func (s *Store) releaseBallast(n int) bool {
	released := false
	for i := 0; i < n; i++ {
		if os.Remove(s.ballastPath(i)) == nil {
			released = true
			s.log.Warn("the disk is nearly full: released a ballast file to keep metadata writable",
				"root", s.root, "file", ballastNames[i], "bytes", s.space.ballast)
		}
	}
	return released
}

// keepBallast writes missing ballast files while there is clearly room.
func (s *Store) keepBallast() {
	if s.space.ballast <= 0 || s.readOnly.Load() {
		return
	}
	for i := len(ballastNames) - 1; i >= 0; i-- { // the restart one first
		path := s.ballastPath(i)
		if fi, err := os.Stat(path); err == nil && fi.Size() == s.space.ballast {
			continue
		}
		if s.measure()-s.space.promised.Load() < s.space.reserve+2*s.space.ballast {
			return // writes in flight were admitted for that space
		}
		tmp := path + ".tmp"
		if err := allocate(tmp, s.space.ballast); err != nil {
			os.Remove(tmp)
			s.log.Warn("cannot write a ballast file", "err", err)
			return
		}
		if err := os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
		}
	}
}

// watchSpace runs in the background: it keeps the free-space state (and
// metric) current, the ballast in place, and a read-only store reopened
// for writing once there is room.
func (s *Store) watchSpace(every time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		free := s.measure()
		if free < s.space.floor {
			s.releaseBallast(1)
			continue
		}
		if s.readOnly.Load() {
			if err := s.reopenWritable(); err != nil {
				s.log.Warn("cannot reopen the store for writing yet", "err", err)
			}
			continue
		}
		s.keepBallast()
	}
}
