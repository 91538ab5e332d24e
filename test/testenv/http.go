package testenv

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ManifestAccept is what a client that understands every manifest format sends.
var ManifestAccept = strings.Join([]string{
	string(types.OCIManifestSchema1), string(types.OCIImageIndex),
	string(types.DockerManifestSchema2), string(types.DockerManifestList),
}, ", ")

// Client talks to loopback servers only: no proxy, no transparent
// decompression (bodies are checked byte for byte), no redirects followed.
var Client = &http.Client{
	Transport: &http.Transport{
		Proxy:               nil,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
	},
	Timeout: 30 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// Fetch does one request with Client and reads the whole body. A body read
// error is returned as err together with the partial body.
func Fetch(method, url string, header map[string]string) (*http.Response, []byte, error) {
	return FetchWithin(Client.Timeout, method, url, header)
}

// FetchWithin is Fetch with a deadline for the whole exchange.
func FetchWithin(timeout time.Duration, method, url string, header map[string]string) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := Client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, body, fmt.Errorf("reading body: %w", err)
	}
	return resp, body, nil
}

// PingV2 checks that GET /v2/ at addr answers 200 with the distribution
// API version header, i.e. that a registry (not just anything) is up.
func PingV2(addr string) error {
	resp, _, err := FetchWithin(5*time.Second, http.MethodGet, "http://"+addr+"/v2/", nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /v2/: status %d", resp.StatusCode)
	}
	if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
		return fmt.Errorf("GET /v2/: Docker-Distribution-API-Version = %q", v)
	}
	return nil
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
