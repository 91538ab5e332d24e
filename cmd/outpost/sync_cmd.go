package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	stdsync "sync"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/outpost-oci/outpost/configs"
	"github.com/outpost-oci/outpost/mirror"
	msync "github.com/outpost-oci/outpost/mirror/sync"
	"github.com/outpost-oci/outpost/store"
	"github.com/urfave/cli/v2"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

func syncCommand() *cli.Command {
	return &cli.Command{
		Name:  "sync",
		Usage: "run mirror jobs now, in the foreground (asks a running outpost serve to run them if it holds the store)",
		Flags: []cli.Flag{
			configFlag(),
			&cli.BoolFlag{Name: "once", Usage: "run each job once and exit (otherwise keep running them on their schedules)"},
			&cli.StringSliceFlag{Name: "mirror", Aliases: []string{"m"}, Usage: "only the mirror `NAME` (repeatable)"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print what would be fetched, fetching nothing but tag lists and HEADs"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runSync(ctx, c.String("config"), c.StringSlice("mirror"), c.Bool("once") || c.Bool("dry-run"), c.Bool("dry-run"), os.Stdout, os.Stderr)
		},
	}
}

// runSync is `outpost sync`. Its exit status is non-zero if any image
// failed.
func runSync(ctx context.Context, path string, names []string, once, dry bool, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	if len(cfg.Mirrors) == 0 {
		return cli.Exit("outpost sync: the config has no mirrors: section", 2)
	}
	known := make([]string, len(cfg.Mirrors))
	for i, m := range cfg.Mirrors {
		known[i] = m.Name
	}
	for _, n := range names {
		if !slices.Contains(known, n) {
			return cli.Exit(fmt.Sprintf("outpost sync: no mirror named %q (have: %s)", n, strings.Join(known, ", ")), 2)
		}
	}
	if len(names) == 0 {
		names = known
	}
	log := newLogger(cfg.Log)
	st, err := store.Open(cfg.Storage.Root, store.Options{Logger: log.With("component", "store"), Reserve: int64(cfg.Storage.Reserve)})
	if errors.Is(err, store.ErrLocked) {
		return syncViaServe(ctx, cfg, names, dry, stdout)
	}
	if err != nil {
		return err
	}
	defer st.Close()

	tty := isTerminal(stderr)
	var bars *mpb.Progress
	var progress msync.Progress = logProgress{log: log}
	if tty {
		bars = mpb.NewWithContext(ctx, mpb.WithOutput(stderr), mpb.WithWidth(100), mpb.WithRefreshRate(200*time.Millisecond))
		progress = newBarProgress(bars)
		log = slog.New(slog.NewTextHandler(bars, &slog.HandlerOptions{Level: slog.LevelWarn})) // bars own the terminal
	}
	a := &app{log: log, store: st, upMetrics: mirror.NewMetrics(nil), cfg: cfg}
	ups, _, err := a.buildUpstreams(cfg)
	if err != nil {
		return err
	}
	defer func() {
		for _, u := range ups {
			u.Close()
		}
	}()
	schedules, err := buildJobs(cfg, ups, st, nil, a, progress)
	if err != nil {
		return err
	}
	schedules = slices.DeleteFunc(schedules, func(s msync.Schedule) bool { return !slices.Contains(names, s.Job.Name()) })

	if !once {
		fmt.Fprintf(stderr, "running %d mirror job(s) on their schedules; Ctrl-C stops\n", len(schedules))
		msync.NewScheduler(schedules, 0, log).Run(ctx)
		return nil
	}
	failed := 0
	for _, s := range schedules {
		var rep *msync.Report
		if dry {
			rep, err = s.Job.DryRun(ctx)
		} else {
			rep, err = s.Job.RunNow(ctx)
		}
		if bars != nil {
			var buf strings.Builder
			printReport(&buf, rep, err)
			bars.Write([]byte(buf.String())) // above the bars
		} else {
			printReport(stdout, rep, err)
		}
		if err != nil || rep.Err() != nil {
			failed++
		}
		if ctx.Err() != nil {
			break
		}
	}
	if bp, ok := progress.(*barProgress); ok {
		bp.finish()
		bars.Wait()
	}
	if failed > 0 {
		return cli.Exit(fmt.Sprintf("outpost sync: %d of %d mirror job(s) had failures", failed, len(schedules)), 1)
	}
	return nil
}

// syncViaServe asks the running instance (its admin listener) to run the
// jobs, for when it holds the store.
func syncViaServe(ctx context.Context, cfg *configs.Config, names []string, dry bool, stdout io.Writer) error {
	if cfg.Admin.Address == "" {
		return cli.Exit("outpost sync: outpost serve is running on "+cfg.Storage.Root+
			"; set admin.address in the config so that outpost sync can ask it to run the jobs", 2)
	}
	fmt.Fprintf(stdout, "outpost serve holds the store; asking it (%s) to run the jobs\n", adminHost(cfg.Admin.Address))
	failed := 0
	for _, name := range names {
		path := "/mirrors/" + url.PathEscape(name) + "/run"
		if dry {
			path += "?dry-run=1"
		}
		resp, b, err := askServe(ctx, cfg.Admin.Address, http.MethodPost, path)
		if resp == nil {
			return fmt.Errorf("outpost sync: asking the running instance: %w", err)
		}
		var body struct {
			Error  string        `json:"error"`
			Report *msync.Report `json:"report"`
		}
		if err == nil {
			err = json.Unmarshal(b, &body)
		}
		if err != nil {
			return fmt.Errorf("outpost sync: the running instance answered %s: %w", resp.Status, err)
		}
		var runErr error
		if body.Error != "" {
			runErr = errors.New(body.Error)
		}
		if body.Report == nil {
			body.Report = &msync.Report{Mirror: name}
		}
		printReport(stdout, body.Report, runErr)
		if runErr != nil || body.Report.Err() != nil {
			failed++
		}
	}
	if failed > 0 {
		return cli.Exit(fmt.Sprintf("outpost sync: %d of %d mirror job(s) had failures", failed, len(names)), 1)
	}
	return nil
}

func printReport(w io.Writer, rep *msync.Report, err error) {
	if rep == nil {
		fmt.Fprintf(w, "mirror: %v\n", err)
		return
	}
	if rep.DryRun {
		fmt.Fprintf(w, "mirror %s (dry run): %d image(s) to fetch, %d up to date\n", rep.Mirror, len(rep.Planned), rep.Unchanged)
		for _, p := range rep.Planned {
			size := "size known once its manifest is fetched"
			if p.Bytes > 0 {
				size = humanize.IBytes(uint64(p.Bytes))
			}
			fmt.Fprintf(w, "  %s:%s  %s  %d missing, %s\n", p.Repo, p.Tag, shortDigest(p.Digest), p.Blobs, size)
		}
	} else {
		fmt.Fprintf(w, "mirror %s: %d image(s) synced, %d up to date, %d manifest(s) and %d blob(s) downloaded (%s) in %s\n",
			rep.Mirror, rep.Images, rep.Unchanged, rep.Manifests, rep.Blobs, humanize.IBytes(uint64(rep.Bytes)),
			rep.Finished.Sub(rep.Started).Round(time.Millisecond))
	}
	for _, f := range rep.Failed {
		fmt.Fprintf(w, "  failed: %s\n", f)
	}
	if err != nil {
		fmt.Fprintf(w, "  error: %v\n", err)
	}
}

func shortDigest(d v1.Hash) string {
	if len(d.Hex) < 12 {
		return d.String()
	}
	return d.Algorithm + ":" + d.Hex[:12]
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// logProgress writes a line per finished blob (for logs and pipes).
type logProgress struct{ log *slog.Logger }

func (p logProgress) BlobStarted(repo string, d v1.Hash, size, from int64) msync.BlobProgress {
	return &logBlob{log: p.log, repo: repo, d: d, size: size, from: from, start: time.Now()}
}

type logBlob struct {
	log        *slog.Logger
	repo       string
	d          v1.Hash
	size, from int64
	n          int64
	start      time.Time
}

func (b *logBlob) Add(n int) { b.n += int64(n) }

func (b *logBlob) Done(err error) {
	elapsed := time.Since(b.start)
	rate := float64(b.n) / max(elapsed.Seconds(), 1e-3)
	if err != nil {
		b.log.Warn("blob download failed", "repo", b.repo, "digest", b.d, "bytes", b.n, "err", err)
		return
	}
	b.log.Info("blob downloaded", "repo", b.repo, "digest", b.d, "bytes", b.n, "resumedFrom", b.from,
		"rate", humanize.IBytes(uint64(rate))+"/s", "duration", elapsed.Round(time.Millisecond))
}

// barProgress draws a bar per blob and one for the whole run.
type barProgress struct {
	p        *mpb.Progress
	total    *mpb.Bar
	mu       stdsync.Mutex
	expected int64
}

func byteDecorators() mpb.BarOption {
	return mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.Name("  "),
		decor.EwmaSpeed(decor.SizeB1024(0), "% .1f", 30), decor.Name("  ETA "), decor.EwmaETA(decor.ET_STYLE_GO, 30))
}

func newBarProgress(p *mpb.Progress) *barProgress {
	total := p.New(0, mpb.BarStyle(), mpb.BarPriority(1<<30),
		mpb.PrependDecorators(decor.Name("all blobs", decor.WC{W: 22, C: decor.DindentRight})), byteDecorators())
	return &barProgress{p: p, total: total}
}

func (bp *barProgress) BlobStarted(repo string, d v1.Hash, size, from int64) msync.BlobProgress {
	bp.mu.Lock()
	bp.expected += max(size-from, 0)
	bp.total.SetTotal(bp.expected, false)
	bp.mu.Unlock()
	bar := bp.p.New(max(size, 0), mpb.BarStyle(), mpb.BarRemoveOnComplete(),
		mpb.PrependDecorators(decor.Name(shortDigest(d), decor.WC{W: 22, C: decor.DindentRight})), byteDecorators())
	bar.SetCurrent(from)
	return &barBlob{bar: bar, total: bp.total, last: time.Now()}
}

// finish completes the total bar once every job has run.
func (bp *barProgress) finish() { bp.total.SetTotal(-1, true) }

type barBlob struct {
	bar, total *mpb.Bar
	last       time.Time
}

func (b *barBlob) Add(n int) {
	now := time.Now()
	b.bar.EwmaIncrBy(n, now.Sub(b.last))
	b.total.EwmaIncrBy(n, now.Sub(b.last))
	b.last = now
}

func (b *barBlob) Done(err error) {
	if err != nil {
		b.bar.Abort(true)
		return
	}
	b.bar.SetTotal(-1, true)
}
