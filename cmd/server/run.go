package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/handoff-go/handoff/handlers"
	"github.com/handoff-go/handoff/internal/kvstore"
	"github.com/handoff-go/handoff/upgrade"
)

// Server timeouts: a slow or stalled client can hold neither a connection
// nor the drain for long. WriteTimeout leaves room for /slow's longest wait.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = handlers.MaxSlow*time.Millisecond + 30*time.Second
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 64 << 10
)

// run is the whole server: it parses args, serves until this generation
// has handed over or stopped, and returns. A *usageError means bad input.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stdout)
	if errors.Is(err, errHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if cfg.ShowVersion {
		fmt.Fprintln(stdout, version)
		return nil
	}

	logger := newLogger(cfg.LogFormat, cfg.LogLevel, stderr)
	if cfg.Supervise {
		// The process started by systemd, a container runtime or a shell
		// stays as the supervisor; the server proper runs in its children.
		isSupervisor, err := upgrade.Supervise(ctx, upgrade.SupervisorOptions{
			Logger:         logger,
			Version:        version,
			UpgradeTimeout: cfg.UpgradeTimeout,
			StopTimeout:    cfg.ShutdownDelay + cfg.DrainTimeout + 3*cfg.CleanupTimeout + 10*time.Second,
			RestartOnCrash: cfg.RestartOnCrash,
		})
		if isSupervisor {
			return err
		}
	}
	if err := prepareDataDir(cfg.DataDir); err != nil {
		return err
	}
	// kv is set before Ready; HandOver runs only after it, when a successor
	// asks, ordered after the assignment by Ready's handshake.
	var kv *kvstore.Store
	upg, err := upgrade.New(upgrade.Options{
		Logger:         logger,
		Version:        version,
		PIDFile:        cfg.PIDFile,
		UpgradeTimeout: cfg.UpgradeTimeout,
		DrainTimeout:   cfg.DrainTimeout,
		ShutdownDelay:  cfg.ShutdownDelay,
		IdleGrace:      cfg.IdleGrace,
		CloseSpread:    cfg.CloseSpread,
		CleanupTimeout: cfg.CleanupTimeout,
		Probation:      cfg.Probation,
		LogConnections: cfg.LogLevel == "debug",
		// The hot cache's keys go to the next generation in memory; the
		// snapshot file is only for a cold start after a full stop.
		HandOver: func(context.Context) ([]byte, error) { return kv.HotKeys() },
	})
	if err != nil {
		return err
	}
	log := upg.Logger()
	st := upg.Status()
	// The store opens (SQLite's open and quick_check, the longest step of
	// a start) while the steps that do not need it run: the token, the
	// previous generation's state, the certificate. Every error still
	// comes before the generation serves.
	opening := openStoreAsync(ctx, cfg.DataDir, log.With().Str("component", "store").Logger())
	token, err := loadToken(cfg.tokenFile(), log)
	if err != nil {
		opening.discard()
		return err
	}
	// A new generation takes the previous one's hot keys over the handoff
	// channel; a state it cannot read fails the upgrade.
	state, err := upg.InheritedState(ctx)
	if err != nil {
		opening.discard()
		return fmt.Errorf("cache state from the previous generation: %w", err)
	}
	var tlsConfig *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			opening.discard()
			return usagef("-tls-cert %s, -tls-key %s: %v", cfg.TLSCert, cfg.TLSKey, err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if kv, err = opening.wait(); err != nil {
		return err
	}
	// Cleanup runs last registered first: persist the cache, then close.
	if err := upg.OnCleanup("close database", kv.Close); err != nil {
		return err
	}
	if err := upg.OnCleanup("persist cache", func(ctx context.Context) error {
		if upg.HandedOver() {
			log.Info().Msg("cache handed over in memory: no snapshot written")
			return nil
		}
		return kv.PersistCache(ctx)
	}); err != nil {
		return err
	}
	if state != nil {
		if err := kv.WarmFrom(ctx, faultState(getenv, state)); err != nil {
			return err
		}
	}
	// Under systemd socket activation the sockets named public and
	// control (FileDescriptorName=) replace -addr and -control-addr.
	ln, err := upg.ListenNamed(ctx, "public", "tcp", cfg.Addr)
	if err != nil {
		return err
	}
	public := &http.Server{
		Handler: handlers.New(handlers.Options{
			Info: handlers.Info{
				PID: st.PID, Generation: st.Generation, Version: st.Version, StartedAt: st.StartedAt,
			},
			Lifecycle: upg,
			Logger:    log.With().Str("component", "http").Logger(),
			KV:        kv,
		}),
		Protocols:         protocols(tlsConfig != nil),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          stdLogger(log.With().Str("component", "http").Logger()),
	}
	if err := upg.Serve(ln, upgrade.HTTP(public), &upgrade.ServeOptions{Name: "public"}); err != nil {
		return err
	}

	network, addr := cfg.controlListen()
	cln, err := upg.ListenNamed(ctx, "control", network, addr)
	if err != nil {
		return fmt.Errorf("control listener: %w", err)
	}
	clog := log.With().Str("component", "control").Logger()
	control := &http.Server{
		Handler: handlers.NewControl(handlers.ControlOptions{
			Token:       token,
			Controller:  controller{upg: upg, store: kv},
			Metrics:     metricsHandler(upg, kv),
			AllowedUIDs: []int{os.Getuid(), 0},
			Logger:      clog,
		}),
		ConnContext:       peerContext,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		// POST /upgrade answers once the new generation is ready or failed.
		WriteTimeout:   cfg.UpgradeTimeout + cfg.Probation + 30*time.Second,
		IdleTimeout:    idleTimeout,
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       stdLogger(clog),
	}
	// Only the serving generation answers on the control socket: one still
	// starting or in probation would answer for a service it does not run.
	if err := upg.Serve(cln, upgrade.HTTP(control), &upgrade.ServeOptions{Name: "control", Control: true}); err != nil {
		return err
	}
	// gRPC, raw TCP and UDP, each only if its flag is set.
	if err := serveOtherProtocols(ctx, upg, cfg, kv, log); err != nil {
		return err
	}
	injectFaults(getenv, upg, log)

	if err := upg.Ready(); err != nil {
		return err
	}
	if state == nil {
		// A cold start: the cache warms from the snapshot the last
		// generation persisted when the service stopped, once that one
		// has exited (at once for the first).
		go func() { // ends once warmed, or when this generation is done
			select {
			case <-upg.PreviousExited():
				if err := kv.Warm(ctx); err != nil {
					log.Warn().Err(err).Msg("warm cache")
				}
			case <-upg.Done():
			}
		}()
	}
	return upg.Run(ctx)
}

// protocols are HTTP/1.1 and HTTP/2: over TLS when it is configured, else
// without (h2c, prior knowledge).
func protocols(tls bool) *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	if tls {
		p.SetHTTP2(true)
	} else {
		p.SetUnencryptedHTTP2(true)
	}
	return &p
}
