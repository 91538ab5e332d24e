package badday

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"testing"

	"github.com/outpost-oci/outpost/test/testenv"
)

func catalog(t *testing.T, s *testenv.Server) []string {
	t.Helper()
	_, body, err := testenv.Fetch("GET", s.URL("/v2/_catalog"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Repositories []string `json:"repositories"`
	}
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatalf("catalog %s: %v", body, err)
	}
	return c.Repositories
}

// Outposts chain: a site box pulls through a regional one, which pulls
// from the registries. Requests carry ns=, so ghcr.io/org/app stays
// ghcr.io/org/app on the regional box instead of landing under its default
// registry, and the CNCF distribution registry ignores the parameter. An
// offline regional box answers 404 for what it lacks, and the site box
// fails over to the registry's own URL.
func TestChainedOutposts(t *testing.T) {
	dir := t.TempDir()
	hub := testenv.StartRegistry(t, filepath.Join(dir, "hub"), testenv.RegistryOptions{})
	ghcr := testenv.StartRegistry(t, filepath.Join(dir, "ghcr"), testenv.RegistryOptions{})
	push(t, hub.Addr, "library/alpine", "3", image(t, 32<<10, 1))
	push(t, ghcr.Addr, "org/app", "1", image(t, 32<<10, 2))

	regional := testenv.StartOutpost(t, filepath.Join(dir, "regional"), testenv.OutpostConfig{
		Upstreams: []testenv.Upstream{
			{Name: "docker.io", URL: hub.URL(""), Default: true},
			{Name: "ghcr.io", URL: ghcr.URL("")},
		},
	})
	site := testenv.StartOutpost(t, filepath.Join(dir, "site"), testenv.OutpostConfig{
		Upstreams: []testenv.Upstream{
			{Name: "docker.io", URLs: []string{regional.URL(""), hub.URL("")}, Default: true},
			{Name: "ghcr.io", URLs: []string{regional.URL(""), ghcr.URL("")}},
		},
	})
	for _, ref := range [][2]string{{"ghcr.io/org/app", "1"}, {"alpine", "3"}} {
		if err := pull(site.URL(""), ref[0], ref[1]); err != nil {
			t.Fatalf("pull %s through site → regional: %v", ref[0], err)
		}
	}
	got := catalog(t, regional)
	if !slices.Equal(got, []string{"docker.io/library/alpine", "ghcr.io/org/app"}) {
		t.Errorf("regional catalog %v: content landed under the wrong registry", got)
	}

	// An offline regional box: its ghcr.io upstream is gone.
	ghcrOnly := testenv.StartRegistry(t, filepath.Join(dir, "ghcr2"), testenv.RegistryOptions{})
	push(t, ghcrOnly.Addr, "org/new", "1", image(t, 32<<10, 1))
	offline := testenv.StartOutpost(t, filepath.Join(dir, "offline-regional"), testenv.OutpostConfig{
		Upstreams: []testenv.Upstream{{Name: "ghcr.io", URL: "http://" + testenv.DeadAddr, Default: true}},
	})
	site2 := testenv.StartOutpost(t, filepath.Join(dir, "site2"), testenv.OutpostConfig{
		Upstreams: []testenv.Upstream{{Name: "ghcr.io", URLs: []string{offline.URL(""), ghcrOnly.URL("")}, Default: true}},
	})
	if err := pull(site2.URL(""), "ghcr.io/org/new", "1"); err != nil {
		t.Fatalf("pull through an offline regional box: %v", err)
	}
	if got := catalog(t, offline); len(got) != 0 {
		t.Errorf("the offline regional box stored %v", got)
	}
}
