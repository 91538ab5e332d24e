// Command outpost is the Outpost OCI pull-through cache. This package is the
// composition root: the only place that reads flags and config files, builds
// the logger and the metrics registry, and wires store, upstreams and front
// end together.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/outpost-oci/outpost/configs"
	"github.com/outpost-oci/outpost/service"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// defaultMemoryLimit is the Go heap's soft limit unless GOMEMLIMIT is set.
const defaultMemoryLimit = 48 << 20

// Stamped by the Makefile through -ldflags.
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	if err := newCLI().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "outpost:", err)
		os.Exit(1)
	}
}

func newCLI() *cli.App {
	return &cli.App{
		Name:  "outpost",
		Usage: "an OCI image pull-through cache for the edge",
		Commands: []*cli.Command{
			{
				Name:  "serve",
				Usage: "serve the cache (on the embedded default config unless --config is given)",
				Flags: []cli.Flag{configFlag()},
				Action: func(c *cli.Context) error {
					// Under systemd or launchd, a stop request cancels ctx.
					return service.Run(c.Context, "outpost", func(ctx context.Context) error {
						return serveCommand(ctx, c.String("config"))
					})
				},
			},
			syncCommand(),
			statusCommand(),
			imagesCommand(),
			serviceCommand(),
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(*cli.Context) error {
					fmt.Printf("outpost %s (commit %s, %s, %s/%s)\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
					return nil
				},
			},
		},
	}
}

func loadConfig(path string) (*configs.Config, error) {
	if path == "" {
		return configs.Default(), nil
	}
	return configs.Load(path)
}

// serveCommand runs Outpost until SIGINT or SIGTERM; SIGHUP rereads the
// config file and swaps in its upstreams, or keeps the running ones if the
// new file is bad.
func serveCommand(ctx context.Context, path string) error {
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		// A soft heap limit keeps bursts (Badger flushing and compacting,
		// many fills at once) from growing the process on a 1 GiB board;
		// the GC simply works harder near it. GOMEMLIMIT overrides it.
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Address)
	if err != nil {
		return err
	}
	var adminLn net.Listener
	if cfg.Admin.Address != "" {
		if adminLn, err = net.Listen("tcp", cfg.Admin.Address); err != nil {
			ln.Close()
			return fmt.Errorf("admin listener: %w", err)
		}
	}
	a, err := start(cfg, newLogger(cfg.Log))
	if err != nil {
		ln.Close()
		return err
	}
	defer a.close()

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				a.reloadFrom(path, loadConfig)
			}
		}
	}()
	return a.run(ctx, ln, adminLn)
}

func newLogger(cfg configs.Log) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(cfg.Level)) // validated by configs
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" || (cfg.Format != "text" && !term.IsTerminal(int(os.Stderr.Fd()))) {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
