package store

import (
	"hash"
	"sync"
)

// Hashing runs beside the writes, on its own goroutine, so that it overlaps
// with network and disk I/O instead of adding to them: SHA-256 is the
// slowest step of a cold pull on a fast link (about 1.5 GB/s with SHA
// instructions, a tenth of that on a Raspberry Pi 4, which has none).
// Buffers are handed over rather than copied where the writer can (see
// BlobWriter.ReadFrom).
const (
	hashChunk = 256 << 10
	hashQueue = 2 // chunks waiting per blob: bounds memory, applies backpressure
)

var hashBuffers = sync.Pool{New: func() any { b := make([]byte, hashChunk); return &b }}

type asyncHash struct {
	h     hash.Hash
	queue chan *[]byte
	done  chan struct{}
	once  sync.Once
	sum   []byte
}

func newAsyncHash(h hash.Hash) *asyncHash {
	a := &asyncHash{h: h, queue: make(chan *[]byte, hashQueue), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		for buf := range a.queue {
			a.h.Write(*buf)
			putBuffer(buf)
		}
		a.sum = a.h.Sum(nil)
	}()
	return a
}

// getBuffer returns a pooled buffer of hashChunk bytes.
func getBuffer() *[]byte { return hashBuffers.Get().(*[]byte) }

func putBuffer(buf *[]byte) {
	*buf = (*buf)[:cap(*buf)]
	hashBuffers.Put(buf)
}

// Write queues a copy of p for hashing.
func (a *asyncHash) Write(p []byte) {
	for len(p) > 0 {
		buf := getBuffer()
		n := copy(*buf, p)
		*buf = (*buf)[:n]
		a.queue <- buf
		p = p[n:]
	}
}

// give hands buf (from getBuffer, its length set to what it holds) over
// for hashing; it goes back to the pool afterwards.
func (a *asyncHash) give(buf *[]byte) { a.queue <- buf }

// Sum waits for everything written and returns the digest. Calling it again
// returns the same sum; it also releases the goroutine.
func (a *asyncHash) Sum() []byte {
	a.once.Do(func() { close(a.queue) })
	<-a.done
	return a.sum
}
