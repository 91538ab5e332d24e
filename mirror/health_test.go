package mirror

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	return addr
}

func serveRegistryOn(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen again on %s: %v", addr, err)
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Connection failures mark the upstream down only after DownAfter of them;
// while it is down one request at a time still tries it (half-open), and
// the probe brings it back.
func TestDownAfterRepeatedConnectionFailures(t *testing.T) {
	addr := closedPort(t)
	u := newTestUpstream(t, Options{URLs: []string{"http://" + addr}, Insecure: true, ProbeInterval: 50 * time.Millisecond})
	for i := 1; i <= 3; i++ {
		if u.Down() {
			t.Fatalf("down after %d failures, want 3", i-1)
		}
		if _, err := u.Head(context.Background(), "acme/app", "1"); err == nil {
			t.Fatal("head on a closed port succeeded")
		}
	}
	if !u.Down() {
		t.Fatal("not marked down after three connection failures")
	}
	// Half-open: the call still goes out (and fails at once, refused).
	var ue *Error
	if _, err := u.Head(context.Background(), "acme/app", "1"); !errors.As(err, &ue) || errors.Is(err, ErrDown) {
		t.Fatalf("half-open call: %v", err)
	}
	serveRegistryOn(t, addr)
	waitUntil(t, "the probe sees the upstream back", func() bool { return !u.Down() })
}

// A half-open request that succeeds marks the upstream up at once, without
// waiting for the probe; meanwhile a second cold request is refused fast.
func TestHalfOpenSuccessMarksUp(t *testing.T) {
	var hang atomic.Bool
	release := make(chan struct{})
	defer close(release)
	srv := registryWith(t, func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if hang.Load() && strings.Contains(r.URL.Path, "/manifests/") {
				select {
				case <-release:
				case <-r.Context().Done():
				}
				return
			}
			reg.ServeHTTP(w, r)
		})
	})
	seed(t, srv, "acme/app")
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true, ProbeInterval: time.Hour, RetryMax: 1})
	u.recordFailure(errors.New("test"))
	u.recordFailure(errors.New("test"))
	u.recordFailure(errors.New("test"))
	if !u.Down() {
		t.Fatal("not down")
	}
	hang.Store(true)
	trial := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, _, err := u.Manifest(ctx, "acme/app", "1")
		trial <- err
	}()
	waitUntil(t, "the trial is in flight", func() bool { return u.health.trial.Load() })
	start := time.Now()
	if _, _, err := u.Manifest(context.Background(), "acme/app", "1"); !errors.Is(err, ErrDown) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("second request during the trial: %v after %v", err, time.Since(start))
	}
	<-trial
	hang.Store(false)
	if _, _, err := u.Manifest(context.Background(), "acme/app", "1"); err != nil {
		t.Fatalf("trial after the upstream is back: %v", err)
	}
	if u.Down() {
		t.Fatal("a successful half-open request did not mark the upstream up")
	}
}

// A slow upstream is not a dead one: requests whose callers give up (the
// cache's revalidation deadline) do not count, and answers that take a
// second still come.
func TestSlowUpstreamIsNotMarkedDown(t *testing.T) {
	srv := registryWith(t, func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(300 * time.Millisecond)
			reg.ServeHTTP(w, r)
		})
	})
	seed(t, srv, "acme/app")
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true, RequestTimeout: 5 * time.Second})
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		if _, err := u.Head(ctx, "acme/app", "1"); err == nil {
			t.Fatal("a cancelled request succeeded")
		}
	}
	if u.Down() {
		t.Fatal("callers giving up marked a slow upstream down")
	}
	if _, err := u.Head(context.Background(), "acme/app", "1"); err != nil {
		t.Fatalf("slow answer: %v", err)
	}
}
