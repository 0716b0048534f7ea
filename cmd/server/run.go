package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/handoff-go/handoff/handlers"
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

	upg, err := upgrade.New(upgrade.Options{
		Logger:         newLogger(cfg.LogFormat, cfg.LogLevel, stderr),
		Version:        version,
		PIDFile:        cfg.PIDFile,
		UpgradeTimeout: cfg.UpgradeTimeout,
		DrainTimeout:   cfg.DrainTimeout,
		ShutdownDelay:  cfg.ShutdownDelay,
		IdleGrace:      cfg.IdleGrace,
		CloseSpread:    cfg.CloseSpread,
		CleanupTimeout: cfg.CleanupTimeout,
		Probation:      cfg.Probation,
	})
	if err != nil {
		return err
	}
	log := upg.Logger()
	st := upg.Status()

	var tlsConfig *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return usagef("-tls-cert %s, -tls-key %s: %v", cfg.TLSCert, cfg.TLSKey, err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := upg.Listen(ctx, "tcp", cfg.Addr)
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
	upg.Serve(public, ln)
	injectFaults(getenv, upg, log)

	if err := upg.Ready(); err != nil {
		return err
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
