package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// TestBlobs covers Range reads, single-flight of concurrent cold fetches and
// digest verification of upstream blobs.
func TestBlobs(t *testing.T) {
	e := newEnv(t, envOptions{TagTTL: "5m"})
	fx := e.Fx

	t.Run("range", func(t *testing.T) {
		b := fx.Busybox.Layers[0]
		url := e.Mirror.URL("/v2/library/busybox/blobs/" + b.Digest)
		size := len(b.Data)
		ranges := []struct {
			header     string
			start, end int // inclusive
		}{
			{"bytes=1000-1999", 1000, 1999}, // cold: nothing cached yet
			{"bytes=0-0", 0, 0},
			{fmt.Sprintf("bytes=%d-", size-10), size - 10, size - 1},
			{fmt.Sprintf("bytes=%d-%d", size/2, size/2+65535), size / 2, size/2 + 65535},
		}
		for _, r := range ranges {
			resp, body, err := testenv.Fetch("GET", url, map[string]string{"Range": r.header})
			if err != nil {
				t.Fatalf("GET Range %s: %v", r.header, err)
			}
			wantCR := fmt.Sprintf("bytes %d-%d/%d", r.start, r.end, size)
			if resp.StatusCode != 206 || resp.Header.Get("Content-Range") != wantCR {
				t.Errorf("GET Range %s: status %d Content-Range %q, want 206 %q",
					r.header, resp.StatusCode, resp.Header.Get("Content-Range"), wantCR)
			}
			if !bytes.Equal(body, b.Data[r.start:r.end+1]) {
				t.Errorf("GET Range %s: got %d bytes, not the requested slice", r.header, len(body))
			}
		}
		e.getBlob(t, "library/busybox", b)
	})

	t.Run("concurrent cold GETs fetch once", func(t *testing.T) {
		b := fx.Tool.Layers[0]
		path := "/v2/acme/tool/blobs/" + b.Digest
		// Hold the upstream answer so that all requests overlap the fetch.
		e.Hub.Front.SetDelay(b.Digest, time.Second)
		const n = 32
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				resp, body, err := testenv.Fetch("GET", e.Mirror.URL(path), nil)
				switch {
				case err != nil:
					errs <- err
				case resp.StatusCode != 200 || digestOf(body) != b.Digest:
					errs <- fmt.Errorf("status %d, %d bytes, digest %s", resp.StatusCode, len(body), digestOf(body))
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("concurrent GET %s: %v", path, err)
		}
		if got := e.Hub.Front.Count("GET", path); got != 1 {
			t.Errorf("%d concurrent GETs caused %d upstream GETs of %s, want 1", n, got, b.Digest)
		}
	})

	t.Run("corrupt upstream blob", func(t *testing.T) {
		b := fx.Alpine.child("linux/arm64").Layers[0]
		path := "/v2/library/alpine/blobs/" + b.Digest
		bad := bytes.Clone(b.Data)
		for i := range bad {
			bad[i] ^= 0xff
		}
		e.Hub.Front.SetCorrupt(b.Digest, true)
		for attempt := 1; attempt <= 2; attempt++ {
			resp, body, err := testenv.Fetch("GET", e.Mirror.URL(path), nil)
			if resp != nil {
				t.Logf("attempt %d with a corrupt upstream: status %d, %d of %d bytes, err %v", attempt, resp.StatusCode, len(body), len(b.Data), err)
			}
			if err == nil && resp.StatusCode/100 == 2 && len(body) == len(b.Data) {
				t.Errorf("attempt %d: corrupt blob served complete: status %d, %d bytes, digest %s, want %s",
					attempt, resp.StatusCode, len(body), digestOf(body), b.Digest)
			}
		}
		if n := e.Hub.Front.Count("GET", path); n == 0 {
			t.Fatalf("outpost never fetched %s from the upstream", path)
		}
		waitNotStored(t, e.Mirror.Data, b.hex(), bad)

		e.Hub.Front.SetCorrupt(b.Digest, false)
		before := e.Hub.Front.Count("GET", path)
		e.getBlob(t, "library/alpine", b)
		if after := e.Hub.Front.Count("GET", path); after == before {
			t.Errorf("the good blob was served without a new upstream fetch: the corrupt copy was kept")
		}
	})
}

// waitNotStored checks, allowing 3 s for cleanup of partial downloads, that
// no file in the data dir is named after the digest or holds a sample of the
// corrupt bytes.
func waitNotStored(t *testing.T, dataDir, hex string, bad []byte) {
	t.Helper()
	sample := bad[len(bad)/2 : len(bad)/2+64]
	var found []string
	for range 30 {
		found = found[:0]
		err := filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if strings.Contains(p, hex) {
				found = append(found, p+" (named after the digest)")
				return nil
			}
			if info, err := d.Info(); err == nil && info.Size() <= 64<<20 {
				if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, sample) {
					found = append(found, p+" (holds corrupt bytes)")
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("walking %s: %v", dataDir, err)
		}
		if len(found) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("corrupt blob stored: %q", found)
}
