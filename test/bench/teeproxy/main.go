// Command teeproxy is the floor that make bench holds Outpost's cold pull
// against: the least work any cache that stores and checks what it serves
// must do. It forwards every request to one upstream and, for blob
// responses, writes the body to a file and hashes it while streaming it to
// the client. It keeps no index, holds nothing back until verified, never
// fsyncs and serves nothing from its files: a cache that did less would not
// be a cache.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"hash"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	upstream := flag.String("upstream", "", "registry to forward to (http://host:port)")
	dir := flag.String("dir", "", "directory for the blob files")
	flag.Parse()
	u, err := url.Parse(*upstream)
	if err != nil || *dir == "" {
		log.Fatalf("teeproxy: want -upstream URL and -dir DIR")
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.BufferPool = &bufferPool{} // 1 MiB copies: fewer syscalls than the default 32 KiB
	proxy.ModifyResponse = func(resp *http.Response) error {
		_, hexDigest, ok := strings.Cut(resp.Request.URL.Path, "/blobs/sha256:")
		if !ok || resp.Request.Method != http.MethodGet || resp.StatusCode != http.StatusOK {
			return nil
		}
		f, err := os.Create(filepath.Join(*dir, hexDigest))
		if err != nil {
			return err
		}
		resp.Body = &teeBody{body: resp.Body, file: f, hash: sha256.New(), want: hexDigest}
		return nil
	}
	srv := &http.Server{Addr: *listen, Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

type bufferPool struct{ pool sync.Pool }

func (p *bufferPool) Get() []byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 1<<20)
}

func (p *bufferPool) Put(b []byte) { p.pool.Put(&b) }

// teeBody writes what the client reads to a file and a hash, and checks the
// digest at the end (too late to stop the client, which a real cache must
// not allow: this is the floor, not a cache).
type teeBody struct {
	body io.ReadCloser
	file *os.File
	hash hash.Hash
	want string
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.body.Read(p)
	if n > 0 {
		if _, werr := t.file.Write(p[:n]); werr != nil {
			return n, werr
		}
		t.hash.Write(p[:n])
	}
	if err == io.EOF {
		if got := hex.EncodeToString(t.hash.Sum(nil)); got != t.want {
			log.Printf("teeproxy: blob %s hashed to %s", t.want, got)
		}
	}
	return n, err
}

func (t *teeBody) Close() error {
	t.file.Close()
	return t.body.Close()
}
