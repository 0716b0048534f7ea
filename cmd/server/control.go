package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/handoff-go/handoff/handlers"
	"github.com/handoff-go/handoff/internal/datadir"
	"github.com/handoff-go/handoff/internal/kvstore"
	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// maxTokenFile is the largest control token file loadToken reads.
const maxTokenFile = 64 << 10

// loadToken reads the control token from path. A missing file is created
// with a random 256-bit token and mode 0600; the token is never logged.
// A file that another user can change is refused: its token could be
// theirs.
func loadToken(path string, log zerolog.Logger) ([]byte, error) {
	b, fi, err := datadir.ReadFile(context.Background(), path, maxTokenFile)
	if errors.Is(err, os.ErrNotExist) {
		return createToken(path, log)
	}
	if err != nil {
		return nil, fmt.Errorf("control token file: %w", err)
	}
	if err := datadir.CheckInfo("control token file", path, fi); err != nil {
		return nil, insecureIsUsage(err)
	}
	tok := bytes.TrimSpace(b)
	if len(tok) < 16 {
		return nil, fmt.Errorf("control token file %s holds %d bytes: use at least 16 (delete it to have one generated)", path, len(tok))
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn().Str("path", path).Str("mode", fi.Mode().Perm().String()).
			Msg("control token file is readable by others: chmod 600 it")
	}
	return tok, nil
}

func createToken(path string, log zerolog.Logger) ([]byte, error) {
	raw := make([]byte, 32)
	rand.Read(raw)
	tok := []byte(hex.EncodeToString(raw))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control token file: %w", err)
	}
	// O_EXCL: if another process created it meanwhile, use its token.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return loadToken(path, log)
	}
	if err != nil {
		return nil, fmt.Errorf("create control token file: %w", err)
	}
	_, err = f.Write(append(tok, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("write control token file: %w", err)
	}
	log.Info().Str("path", path).Msg("created control token file")
	return tok, nil
}

// peerContext is the control server's ConnContext hook: for a unix socket
// connection it records the peer's uid (SO_PEERCRED) for the control API.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return handlers.WithPeerUID(ctx, -1)
	}
	uid := -1 // unknown: refused
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid = int(cred.Uid)
		}
	})
	return handlers.WithPeerUID(ctx, uid)
}

// serverStatus is what GET /status answers.
type serverStatus struct {
	upgrade.Status
	Cache *kvstore.CacheStats `json:"cache,omitempty"`
}

// controller adapts the Upgrader to handlers.Controller.
type controller struct {
	upg   *upgrade.Upgrader
	store *kvstore.Store // nil when the store is not open
}

func (c controller) Status() any {
	st := serverStatus{Status: c.upg.Status()}
	if c.store != nil {
		cs := c.store.CacheStats()
		st.Cache = &cs
	}
	return st
}

// upgradeResult is what POST /upgrade answers on success.
type upgradeResult struct {
	PID        int     `json:"pid"`
	Version    string  `json:"version"`
	Generation int     `json:"generation"`
	DurationMS float64 `json:"duration_ms"`
}

func (c controller) Upgrade(ctx context.Context) (any, error) {
	res, err := c.upg.Upgrade(ctx)
	if err == nil {
		return upgradeResult{res.PID, res.Version, res.Generation, upgrade.Duration(res.Duration).Milliseconds()}, nil
	}
	var ue *upgrade.UpgradeError
	switch {
	case errors.Is(err, upgrade.ErrUpgradeInProgress),
		errors.Is(err, upgrade.ErrHotRestartDisabled),
		errors.Is(err, upgrade.ErrStandalone):
		return nil, &handlers.ControlError{Code: 409, Msg: err.Error()}
	case errors.Is(err, upgrade.ErrStopping):
		return nil, &handlers.ControlError{Code: 503, Msg: err.Error()}
	case errors.As(err, &ue):
		d := map[string]any{}
		if ue.ChildPID != 0 {
			d["child_pid"] = ue.ChildPID
		}
		if ue.Exit != "" {
			d["exit_status"] = ue.Exit
		}
		if ue.TimedOut {
			d["timed_out"] = true
		}
		if len(ue.Stderr) > 0 {
			d["stderr_tail"] = ue.Stderr
		}
		return nil, &handlers.ControlError{Code: 502, Msg: ue.Error(), Details: d}
	}
	return nil, err
}

func (c controller) Shutdown() {
	go c.upg.Shutdown(context.Background()) // ends when the generation has stopped
}
