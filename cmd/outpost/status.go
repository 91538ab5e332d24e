package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	msync "github.com/outpost-oci/outpost/mirror/sync"
	"github.com/urfave/cli/v2"
)

// status is what GET /status on the admin listener answers and `outpost
// status` prints.
type status struct {
	Version   string           `json:"version"`
	Started   time.Time        `json:"started"`
	Upstreams []upstreamStatus `json:"upstreams"`
	Mirrors   []msync.Status   `json:"mirrors"`
}

type upstreamStatus struct {
	Name string `json:"name"`
	Up   bool   `json:"up"`
}

func (a *app) status() status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := status{Version: version, Started: a.started, Mirrors: []msync.Status{}}
	for _, u := range a.upstreams {
		st.Upstreams = append(st.Upstreams, upstreamStatus{Name: u.Name(), Up: !u.Down()})
	}
	if a.mirrors != nil {
		st.Mirrors = a.mirrors.sched.Status()
	}
	slices.SortFunc(st.Mirrors, func(x, y msync.Status) int { return strings.Compare(x.Mirror, y.Mirror) })
	return st
}

func (a *app) serveStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.status())
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show a running instance's upstreams and mirror jobs (read from its admin listener)",
		Flags: []cli.Flag{
			configFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print the JSON the instance sends"},
		},
		Action: func(c *cli.Context) error {
			return runStatus(c.Context, c.String("config"), c.Bool("json"), c.App.Writer)
		},
	}
}

func runStatus(ctx context.Context, path string, asJSON bool, w io.Writer) error {
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	if cfg.Admin.Address == "" {
		return cli.Exit("outpost status: the config sets no admin.address, so there is nothing to ask", 2)
	}
	resp, b, err := askServe(ctx, cfg.Admin.Address, http.MethodGet, "/status")
	if resp == nil {
		return cli.Exit(fmt.Sprintf("outpost status: is outpost serve running? %v", err), 1)
	}
	if err != nil || resp.StatusCode != http.StatusOK {
		return cli.Exit(fmt.Sprintf("outpost status: the instance answered %s %v", resp.Status, err), 1)
	}
	if asJSON {
		_, err := w.Write(b)
		return err
	}
	var st status
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("outpost status: %w", err)
	}
	printStatus(w, st, time.Now())
	return nil
}

func printStatus(w io.Writer, st status, now time.Time) {
	fmt.Fprintf(w, "outpost %s, up %s\n\n", st.Version, now.Sub(st.Started).Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tSTATE")
	for _, u := range st.Upstreams {
		state := "up"
		if !u.Up {
			state = "DOWN"
		}
		fmt.Fprintf(tw, "%s\t%s\n", u.Name, state)
	}
	tw.Flush()
	if len(st.Mirrors) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MIRROR\tLAST RUN\tRESULT\tDURATION\tIMAGES\tBYTES\tNEXT RUN")
	for _, m := range st.Mirrors {
		last, result, took, images, bytes := "never", "-", "-", "-", "-"
		if m.Last != nil {
			last = humanize.RelTime(m.Last.Started, now, "ago", "from now")
			result = "ok"
			switch {
			case m.LastErr != "":
				result = "failed: " + m.LastErr
			case len(m.Last.Failed) > 0:
				result = fmt.Sprintf("%d failed", len(m.Last.Failed))
			}
			took = m.Last.Finished.Sub(m.Last.Started).Round(time.Millisecond).String()
			images = fmt.Sprintf("%d new, %d same", m.Last.Images, m.Last.Unchanged)
			bytes = humanize.IBytes(uint64(m.Last.Bytes))
		}
		next := humanize.RelTime(m.Next, now, "ago", "from now")
		if m.Running {
			next = "running now"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Mirror, last, result, took, images, bytes, next)
	}
	tw.Flush()
	for _, m := range st.Mirrors {
		if m.Last != nil {
			for _, f := range m.Last.Failed {
				fmt.Fprintf(w, "  %s: %s\n", m.Mirror, f)
			}
		}
	}
}
