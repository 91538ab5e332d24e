package cache

// Validators for the distribution spec's grammar of repository names, tags
// and digests, written out by hand: they run on every request, and the
// equivalent regular expressions (kept in the tests, which check the two
// agree) cost a tenth of a manifest request's CPU.
//
//	name:   [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
//	tag:    [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
//	digest: sha256:[a-f0-9]{64} | sha512:[a-f0-9]{128}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// validRepo reports whether s is a repository name: path components of
// lower-case alphanumerics joined by ".", "_", "__" or runs of "-".
func validRepo(s string) bool {
	for _, comp := range splitSlash(s) {
		if !validComponent(comp) {
			return false
		}
	}
	return s != ""
}

func splitSlash(s string) []string {
	var parts []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

func validComponent(c string) bool {
	if c == "" || !isLowerAlnum(c[0]) || !isLowerAlnum(c[len(c)-1]) {
		return false
	}
	for i := 1; i < len(c); {
		if isLowerAlnum(c[i]) {
			i++
			continue
		}
		// A separator: ".", "_", "__" or one or more "-", then an alphanumeric.
		j := i
		switch c[i] {
		case '.':
			j++
		case '_':
			j++
			if j < len(c) && c[j] == '_' {
				j++
			}
		case '-':
			for j < len(c) && c[j] == '-' {
				j++
			}
		default:
			return false
		}
		if j >= len(c) || !isLowerAlnum(c[j]) {
			return false
		}
		i = j
	}
	return true
}

// validTag reports whether s is a tag.
func validTag(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || i > 0 && (c == '.' || c == '-')
		if !ok {
			return false
		}
	}
	return true
}

// validDigest reports whether s is a sha256 or sha512 digest.
func validDigest(s string) bool {
	var hex string
	switch {
	case len(s) == 7+64 && s[:7] == "sha256:":
		hex = s[7:]
	case len(s) == 7+128 && s[:7] == "sha512:":
		hex = s[7:]
	default:
		return false
	}
	for i := 0; i < len(hex); i++ {
		if c := hex[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
