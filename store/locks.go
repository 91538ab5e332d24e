package store

import (
	"sort"
	"strings"
	"sync"
)

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
