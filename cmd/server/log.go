package main

import (
	"io"
	"log"
	"os"
	"time"

	"github.com/handoff-go/handoff/upgrade"
	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// newLogger builds the root logger: JSON lines, or console output for a
// person when asked or when stderr is a terminal. Every event carries a
// timestamp with sub-second precision, since restarts take milliseconds.
func newLogger(format, level string, w io.Writer) zerolog.Logger {
	lvl, _ := zerolog.ParseLevel(level) // validated with the config
	if format == "console" || (format == "auto" && isTerminal(w)) {
		// isTerminal asks upgrade, which knows the service's stderr even in
		// a generation whose own stderr is still a pipe through the last.
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	}
	return zerolog.New(w).Level(lvl).Hook(timestampHook{})
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if ok && f == os.Stderr {
		return upgrade.StderrIsTerminal()
	}
	return ok && isatty.IsTerminal(f.Fd())
}

// timestampHook adds the time as RFC 3339 with nanoseconds, without
// touching zerolog's global time settings.
type timestampHook struct{}

func (timestampHook) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	e.Str(zerolog.TimestampFieldName, time.Now().Format(time.RFC3339Nano))
}

// stdLogger adapts a zerolog.Logger for http.Server.ErrorLog, whose lines
// are panics in handlers and broken connections.
func stdLogger(l zerolog.Logger) *log.Logger {
	return log.New(zerologWriter{l}, "", 0)
}

type zerologWriter struct{ l zerolog.Logger }

func (z zerologWriter) Write(p []byte) (int, error) {
	n := len(p)
	if n > 0 && p[n-1] == '\n' {
		p = p[:n-1]
	}
	z.l.Warn().Msg(string(p))
	return n, nil
}
