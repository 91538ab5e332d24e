package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/outpost-oci/outpost/store"
	"github.com/urfave/cli/v2"
)

func imagesCommand() *cli.Command {
	return &cli.Command{
		Name:  "images",
		Usage: "list what the store holds, image by image: size, last access, pinned and why (reads a running instance too)",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "sort", Value: "size", Usage: "`ORDER`: size (largest first) or age (least recently used first)"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON, for scripts"},
		},
		Action: func(c *cli.Context) error {
			return runImages(c.Context, c.String("config"), c.String("sort"), c.Bool("json"), c.App.Writer)
		},
	}
}

func runImages(ctx context.Context, path, order string, asJSON bool, w io.Writer) error {
	if order != "size" && order != "age" {
		return cli.Exit(fmt.Sprintf("outpost images: --sort %q: want size or age", order), 2)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	var images []store.Image
	st, err := store.Open(cfg.Storage.Root, store.Options{Logger: newLogger(cfg.Log).With("component", "store")})
	switch {
	case errors.Is(err, store.ErrLocked):
		if images, err = imagesFromServe(ctx, cfg.Admin.Address, cfg.Storage.Root); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		images, err = st.Images()
		st.Close()
		if err != nil {
			return err
		}
	}
	sortImages(images, order)
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"images": images})
	}
	printImages(w, images, time.Now())
	return nil
}

// imagesFromServe asks the running instance, which holds the store.
func imagesFromServe(ctx context.Context, admin, root string) ([]store.Image, error) {
	if admin == "" {
		return nil, cli.Exit("outpost images: outpost serve is running on "+root+
			"; set admin.address in the config so that outpost images can ask it", 2)
	}
	resp, b, err := askServe(ctx, admin, http.MethodGet, "/images")
	if resp == nil {
		return nil, fmt.Errorf("outpost images: asking the running instance: %w", err)
	}
	var body struct {
		Images []store.Image `json:"images"`
	}
	if err == nil {
		err = json.Unmarshal(b, &body)
	}
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("outpost images: the running instance answered %s: %v", resp.Status, err)
	}
	return body.Images, nil
}

func (a *app) serveImages(w http.ResponseWriter, _ *http.Request) {
	images, err := a.store.Images()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"images": images})
}

// lastUsed is when an image was last read, or stored if never read.
func lastUsed(img store.Image) time.Time {
	if img.Accessed.After(img.Stored) {
		return img.Accessed
	}
	return img.Stored
}

func sortImages(images []store.Image, order string) {
	slices.SortStableFunc(images, func(a, b store.Image) int {
		if order == "age" {
			if c := lastUsed(a).Compare(lastUsed(b)); c != 0 {
				return c
			}
		} else if a.Size != b.Size {
			if a.Size > b.Size {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Digest.String(), b.Digest.String())
	})
}

func printImages(w io.Writer, images []store.Image, now time.Time) {
	var total, shared int64
	pinned := 0
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SIZE\tSHARED\tLAST USED\tPINNED BY\tIMAGE")
	for _, img := range images {
		name := strings.Join(img.Tags, ", ")
		if name == "" {
			name = shortDigest(img.Digest)
			if len(img.Repos) > 0 {
				name = img.Repos[0] + "@" + name
			}
			if img.MediaType == "" {
				name += " (blob)"
			}
		}
		pins := strings.Join(img.PinnedBy, ", ")
		if pins == "" {
			pins = "-"
		} else {
			pinned++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", humanize.IBytes(uint64(img.Size)), humanize.IBytes(uint64(img.Shared)),
			humanize.RelTime(lastUsed(img), now, "ago", "from now"), pins, name)
		total += img.Size
		shared += img.Shared
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d image(s), %d pinned; %s held by one image each, %s counted under each image that shares it\n",
		len(images), pinned, humanize.IBytes(uint64(total)), humanize.IBytes(uint64(shared)))
}
