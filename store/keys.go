package store

import "strings"

// Badger keys. Variable parts end in NUL so that prefix scans are exact
// ("a/b" must not match "a/bc"). Repositories are full canonical names such as
// "docker.io/library/alpine".
const (
	prefixBlob     = "b/" // b/<digest> → blobMeta
	prefixManifest = "m/" // m/<digest> → manifestMeta
	prefixTag      = "t/" // t/<repo>\0<tag> → tagMeta
	prefixLink     = "l/" // l/<repo>\0<digest> → empty: the repository references the content
	prefixRepo     = "r/" // r/<repo> → empty: the repository exists (for the catalog)
	prefixReferrer = "x/" // x/<repo>\0<subject>\0<referrer> → v1.Descriptor of the referrer
	prefixAccess   = "a/" // a/<digest> → last access, unix seconds rounded to the hour
	prefixPin      = "p/" // p/<owner>\0<repo>\0<tag> → pinMeta: what the owner keeps
	keyVersion     = "v"  // schema version
	schemaVersion  = "1"
)

func blobKey(digest string) []byte     { return []byte(prefixBlob + digest) }
func manifestKey(digest string) []byte { return []byte(prefixManifest + digest) }
func accessKey(digest string) []byte   { return []byte(prefixAccess + digest) }
func repoKey(repo string) []byte       { return []byte(prefixRepo + repo) }

func tagPrefix(repo string) []byte       { return []byte(prefixTag + repo + "\x00") }
func tagKey(repo, tag string) []byte     { return append(tagPrefix(repo), tag...) }
func linkKey(repo, digest string) []byte { return []byte(prefixLink + repo + "\x00" + digest) }

func referrerPrefix(repo, subject string) []byte {
	return []byte(prefixReferrer + repo + "\x00" + subject + "\x00")
}
func referrerKey(repo, subject, referrer string) []byte {
	return append(referrerPrefix(repo, subject), referrer...)
}

func pinPrefix(owner string) []byte { return []byte(prefixPin + owner + "\x00") }
func pinKey(owner, repo, tag string) []byte {
	return append(pinPrefix(owner), repo+"\x00"+tag...)
}

// lastPart returns what follows the final NUL of a key.
func lastPart(key []byte) string {
	s := string(key)
	return s[strings.LastIndexByte(s, 0)+1:]
}
