package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load reads the file at path and parses it with Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is already the prefix
		}
		return nil, fmt.Errorf("%s: cannot read config file: %w", path, err)
	}
	return Parse(path, data)
}

// Parse decodes data strictly (unknown keys, a second document and an empty
// file are errors), applies defaults, validates, and reads password files.
// Every line of the returned error begins with source.
func Parse(source string, data []byte) (*Config, error) {
	doc, err := parseTree(data)
	if err != nil {
		return nil, prefix(source, err)
	}
	idx := newIndex(doc)

	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, prefix(source, cleanYAMLError(err))
		}
		errs := make([]error, len(te.Errors))
		for i, m := range te.Errors {
			errs[i] = errors.New(idx.rewrite(m))
		}
		return nil, prefix(source, errors.Join(errs...))
	}

	c.applyDefaults(idx.set)
	if err := c.Validate(); err != nil {
		return nil, prefix(source, idx.addLines(err))
	}
	if err := c.readPasswords(); err != nil {
		return nil, prefix(source, idx.addLines(err))
	}
	for i := range c.Upstreams {
		for j, u := range c.Upstreams[i].URLs {
			c.Upstreams[i].URLs[j] = strings.TrimSuffix(u, "/") // callers append "/v2/..."
		}
	}
	return &c, nil
}

// parseTree parses data into a node tree and enforces "exactly one
// non-empty document".
func parseTree(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, errors.New("the file is empty; see configs/examples/minimal.yaml for a starting point")
		}
		return nil, cleanYAMLError(err)
	}
	if len(doc.Content) == 0 || doc.Content[0].ShortTag() == "!!null" {
		return nil, errors.New("the file is empty; see configs/examples/minimal.yaml for a starting point")
	}
	var more yaml.Node
	switch err := dec.Decode(&more); {
	case err == io.EOF:
	case err != nil:
		return nil, cleanYAMLError(err)
	default:
		return nil, fmt.Errorf("line %d: a second YAML document (after ---) is not allowed; put everything in one document", more.Line)
	}
	return &doc, nil
}

func cleanYAMLError(err error) error {
	return errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
}

// prefix puts source in front of every joined error, so each line of a
// multi-error message names the file.
func prefix(source string, err error) error {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = fmt.Errorf("%s: %w", source, e)
	}
	return errors.Join(out...)
}

// index remembers where each key and value sits in the file, so that
// messages can carry both a line number and a field path.
type index struct {
	set    map[string]bool // paths present with a non-null value
	lines  map[string]int  // path -> line
	values []nodeAt        // value nodes in document order
	keys   []nodeAt        // key nodes; path is the parent's
}

type nodeAt struct {
	line  int
	tag   string
	value string
	path  string
}

func newIndex(doc *yaml.Node) *index {
	idx := &index{set: map[string]bool{}, lines: map[string]int{}}
	idx.walk(doc.Content[0], "")
	return idx
}

func (idx *index) walk(n *yaml.Node, path string) {
	idx.values = append(idx.values, nodeAt{n.Line, n.ShortTag(), n.Value, path})
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			idx.keys = append(idx.keys, nodeAt{k.Line, k.ShortTag(), k.Value, path})
			idx.lines[p] = k.Line
			if v.ShortTag() != "!!null" {
				idx.set[p] = true
			}
			idx.walk(v, p)
		}
	case yaml.SequenceNode:
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			idx.lines[p] = item.Line
			idx.set[p] = true
			idx.walk(item, p)
		}
	}
}

var (
	reUnknown  = regexp.MustCompile("^line (\\d+): field (.*) not found in type (\\S+)$")
	reTwice    = regexp.MustCompile("^line (\\d+): field (.*) already set in type (\\S+)$")
	reBadValue = regexp.MustCompile("^line (\\d+): cannot unmarshal (!!\\w+)(?: `(.*)`)? into (\\S+)$")
)

// goTypes maps the type names yaml.v3 prints to our types.
var goTypes = map[string]reflect.Type{}

func init() {
	for _, v := range []any{Config{}, HTTP{}, Admin{}, Storage{}, Log{}, Fills{}, Upstream{}, Mirror{}, TagFilter{}, RateLimit{}} {
		t := reflect.TypeOf(v)
		goTypes[t.String()] = t
	}
}

// rewrite turns one of yaml.v3's Go-flavoured messages into user words.
func (idx *index) rewrite(msg string) string {
	if m := reUnknown.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		where := "the top level"
		for _, k := range idx.keys {
			if k.line == line && k.value == m[2] {
				if k.path != "" {
					where = k.path
				}
				break
			}
		}
		s := fmt.Sprintf("line %d: unknown field %q in %s", line, m[2], where)
		if hint := suggest(m[2], goTypes[m[3]]); hint != "" {
			s += fmt.Sprintf(" (did you mean %q?)", hint)
		}
		return s
	}
	if m := reTwice.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("line %s: field %q is set twice", m[1], m[2])
	}
	if m := reBadValue.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		tag, value, into := m[2], m[3], m[4]
		got := map[string]string{"!!seq": "a list", "!!map": "a mapping"}[tag]
		if got == "" {
			got = strconv.Quote(strings.TrimSuffix(value, "..."))
		}
		path := idx.pathOf(line, tag, value)
		if path == "" {
			path = "top level"
		}
		return fmt.Sprintf("line %d: %s: %s is not %s", line, path, got, describe(into))
	}
	return msg
}

// pathOf finds the value node yaml.v3 complained about. yaml.v3 shortens
// long values to 7 characters plus "...".
func (idx *index) pathOf(line int, tag, value string) string {
	fallback := ""
	for _, n := range idx.values {
		if n.line != line {
			continue
		}
		if n.tag == tag && (n.value == value || (strings.HasSuffix(value, "...") && strings.HasPrefix(n.value, strings.TrimSuffix(value, "...")))) {
			return n.path
		}
		if fallback == "" {
			fallback = n.path
		}
	}
	return fallback
}

// describe says in plain words what a Go type expects.
func describe(goType string) string {
	switch goType {
	case "bool":
		return "true or false"
	case "string":
		return "a single value"
	case "[]string":
		return "a list, like [https://a.example, https://b.example]"
	case "[]configs.Upstream":
		return `a list of upstreams (entries starting with "- name:")`
	case "configs.Duration":
		return "a duration like 5m, 30s or 1h30m"
	case "configs.Size":
		return "a size like 64MiB, 16GiB or 500MB"
	case "configs.Rate":
		return "a rate like 10MiB/s"
	case "configs.Window":
		return "a daily window like 01:00-05:00"
	case "[]configs.Mirror":
		return `a list of mirrors (entries starting with "- name:")`
	case "int":
		return "a whole number"
	case "configs.Config":
		return "a mapping with keys like http, storage, log, upstreams"
	}
	if t, ok := goTypes[goType]; ok {
		return "a mapping with keys like " + strings.Join(fieldNames(t), ", ")
	}
	return "a " + goType
}

func fieldNames(t reflect.Type) []string {
	var names []string
	for i := 0; i < t.NumField(); i++ {
		if n := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]; n != "" && n != "-" {
			names = append(names, n)
		}
	}
	return names
}

// suggest returns the known field closest to a misspelt key, or "".
func suggest(key string, t reflect.Type) string {
	if t == nil {
		return ""
	}
	best, bestDist := "", 3 // more than 2 edits is a different word
	for _, n := range fieldNames(t) {
		if strings.EqualFold(n, key) {
			return n
		}
		if len(key) >= 4 && strings.HasPrefix(strings.ToLower(n), strings.ToLower(key)) {
			best, bestDist = n, 0 // a shortened name
		}
		if d := editDistance(strings.ToLower(key), strings.ToLower(n)); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// addLines puts "line N: " in front of validation errors whose field is in
// the file.
func (idx *index) addLines(err error) error {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
		var fe *fieldError
		if errors.As(e, &fe) {
			if line, ok := idx.lines[fe.Path]; ok {
				out[i] = fmt.Errorf("line %d: %w", line, e)
			}
		}
	}
	return errors.Join(out...)
}

func (c *Config) applyDefaults(set map[string]bool) {
	def := func(dst *string, path, v string) {
		if !set[path] {
			*dst = v
		}
	}
	def(&c.HTTP.Address, "http.address", DefaultAddress)
	def(&c.Storage.Root, "storage.root", DefaultStorageRoot)
	def(&c.Log.Level, "log.level", DefaultLogLevel)
	def(&c.Log.Format, "log.format", DefaultLogFormat)
	if !set["fills.maxBlobSize"] {
		c.Fills.MaxBlobSize = DefaultMaxBlobSize
	}
	for i := range c.Mirrors {
		m := &c.Mirrors[i]
		if !set[fmt.Sprintf("mirrors[%d].interval", i)] {
			m.Interval = DefaultMirrorInterval
		}
		if !set[fmt.Sprintf("mirrors[%d].jitter", i)] {
			m.Jitter = m.Interval / 10
		}
		if !set[fmt.Sprintf("mirrors[%d].rateLimit.min", i)] {
			m.RateLimit.Min = 10
		}
		if !set[fmt.Sprintf("mirrors[%d].rateLimit.retry", i)] {
			m.RateLimit.Retry = DefaultRateLimitRetry
		}
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if !set[fmt.Sprintf("upstreams[%d].tagTTL", i)] {
			u.TagTTL = DefaultTagTTL
		}
		if !set[fmt.Sprintf("upstreams[%d].revalidateTimeout", i)] {
			u.RevalidateTimeout = DefaultRevalidateTimeout
		}
	}
}

// readPasswords fills Password from PasswordFile.
func (c *Config) readPasswords() error {
	var errs []error
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.PasswordFile == "" {
			continue
		}
		b, err := os.ReadFile(u.PasswordFile)
		if err != nil {
			errs = append(errs, fileError(fmt.Sprintf("upstreams[%d].passwordFile", i), u.PasswordFile, err))
			continue
		}
		u.Password = strings.TrimRight(string(b), "\r\n")
		if u.Password == "" {
			errs = append(errs, &fieldError{Path: fmt.Sprintf("upstreams[%d].passwordFile", i), Msg: fmt.Sprintf("%s is empty", u.PasswordFile)})
		}
	}
	return errors.Join(errs...)
}
