package testenv

import (
	"crypto/rand"
	"net/http"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// RandomImage is an image of layers random, incompressible layers of size
// bytes each, stored uncompressed: quick to make however large.
func RandomImage(tb testing.TB, size int64, layers int) v1.Image {
	tb.Helper()
	img := empty.Image
	for i := 0; i < layers; i++ {
		b := make([]byte, size)
		rand.Read(b)
		var err error
		if img, err = mutate.AppendLayers(img, static.NewLayer(b, types.DockerLayer)); err != nil {
			tb.Fatal(err)
		}
	}
	return img
}

// TrickleWriter sends what is written to it Chunk bytes per Pause: a slow
// upstream. It gives up when Done is closed (the request's context).
type TrickleWriter struct {
	http.ResponseWriter
	Chunk int
	Pause time.Duration
	Done  <-chan struct{}
}

func (w TrickleWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), w.Chunk)
		m, err := w.ResponseWriter.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		w.ResponseWriter.(http.Flusher).Flush()
		select {
		case <-w.Done:
			return n, http.ErrAbortHandler
		case <-time.After(w.Pause):
		}
		p = p[k:]
	}
	return n, nil
}
