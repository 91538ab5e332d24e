package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/vbauerster/mpb/v8"
)

// The bars draw the blob's bytes, and the total over every blob.
func TestProgressBars(t *testing.T) {
	var out bytes.Buffer
	p := mpb.New(mpb.WithOutput(&out), mpb.WithWidth(100), mpb.WithAutoRefresh()) // draws into a non-terminal too
	bp := newBarProgress(p)
	d, _ := v1.NewHash("sha256:" + strings.Repeat("ab", 32))
	b := bp.BlobStarted("docker.io/library/alpine", d, 3<<20, 1<<20)
	b.Add(1 << 20)
	b.Add(1 << 20)
	b.Done(nil)
	bp.finish()
	p.Wait()
	for _, want := range []string{"all blobs", "3.0 MiB / 3.0 MiB", "2.0 MiB / 2.0 MiB"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("bars lack %q:\n%q", want, out.String())
		}
	}
}

// Without a terminal, each blob is a log line with its size and rate.
func TestProgressLogLines(t *testing.T) {
	var out bytes.Buffer
	p := logProgress{log: slog.New(slog.NewTextHandler(&out, nil))}
	d, _ := v1.NewHash("sha256:" + strings.Repeat("cd", 32))
	b := p.BlobStarted("docker.io/library/alpine", d, 2048, 1024)
	b.Add(1024)
	b.Done(nil)
	p.BlobStarted("docker.io/library/alpine", d, 10, 0).Done(errors.New("reset"))
	for _, want := range []string{"blob downloaded", "bytes=1024", "resumedFrom=1024", "rate=", "blob download failed", "err=reset"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, out.String())
		}
	}
}
