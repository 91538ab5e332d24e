package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The import rules between Outpost's packages (see ARCHITECTURE.md):
// cmd → cache, mirror → store; cache and mirror never import each other;
// configs, store and service import no other Outpost package; Badger stays
// inside store, fasthttp inside cache, go-retryablehttp and
// go-containerregistry's remote inside mirror. Test files are not bound.
func TestImportRules(t *testing.T) {
	const module = "github.com/outpost-oci/outpost"
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	owner := map[string]string{ // third-party prefix → the one package that may import it
		"github.com/dgraph-io/badger":                              "store",
		"github.com/valyala/fasthttp":                              "cache",
		"github.com/hashicorp/go-retryablehttp":                    "mirror",
		"github.com/google/go-containerregistry/pkg/v1/remote\x00": "mirror", // \x00: remote itself, not remote/transport
		"github.com/kardianos/service":                             "service",
		"github.com/urfave/cli":                                    "cmd/outpost",
	}
	allowed := map[string][]string{ // Outpost package → the Outpost packages it may import
		"cache": {"store"}, "mirror": {"store"}, "store": nil, "configs": nil, "service": nil,
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(strings.TrimPrefix(fields[0], module), "/")
		top := strings.SplitN(pkg, "/", 2)[0]
		if top == "test" || top == "cmd" && pkg != "cmd/outpost" {
			continue // test harnesses and helpers drive everything
		}
		for _, imp := range fields[1:] {
			if inner, ok := strings.CutPrefix(imp, module+"/"); ok {
				innerTop := strings.SplitN(inner, "/", 2)[0]
				if may, bound := allowed[top]; bound && innerTop != top && !contains(may, innerTop) {
					t.Errorf("%s imports %s", pkg, imp)
				}
				continue
			}
			for prefix, only := range owner {
				exact := strings.HasSuffix(prefix, "\x00")
				p := strings.TrimSuffix(prefix, "\x00")
				if (imp == p || !exact && strings.HasPrefix(imp, p)) && !strings.HasPrefix(pkg, only) {
					t.Errorf("%s imports %s, which belongs to %s", pkg, imp, only)
				}
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
