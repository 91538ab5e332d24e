package configs

import (
	"strings"
	"testing"
)

// FuzzParse: any file either loads into a config that validates, or fails
// with a message that names the file; never a panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(issueExample))
	f.Add(DefaultYAML())
	for _, seed := range []string{
		"http: {address: ':5000'}\n", "upstreams:\n  - name: a.io\n    urls: [https://a.io]\n    tagTTL: 5x\n",
		"storage: {reserve: 64MiB}\nfills: {max: 4, maxBlobSize: 1GiB, queue: 5s}\n", "---\n---\n", "upstreams: 3\n",
		"http:\n  adress: x\n", "log: {level: loud}\n", "storage: {reserve: lots}\n", "\x00", "a: &a [*a]\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "fuzz.yaml: ") {
					t.Fatalf("an error line does not name the file: %q", line)
				}
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that does not validate: %v", err)
		}
	})
}
