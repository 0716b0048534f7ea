package upgrade

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"

	"github.com/rs/zerolog"
)

// SlogLogger returns a zerolog.Logger, for Options.Logger and
// SupervisorOptions.Logger, whose events go to l: a program that logs
// with log/slog adopts upgrade without a second logger. Each event (one
// per lifecycle transition, so few) is decoded from zerolog's JSON into a
// slog record with the same message and fields; levels map to slog's
// (zerolog's trace is slog's debug).
func SlogLogger(l *slog.Logger) zerolog.Logger {
	return zerolog.New(slogWriter{l})
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	var fields map[string]any
	if err := json.Unmarshal(p, &fields); err != nil {
		w.l.Warn("upgrade: undecodable log event", "event", string(p))
		return len(p), nil
	}
	level := slog.LevelInfo
	switch fields[zerolog.LevelFieldName] {
	case "trace", "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error", "fatal", "panic":
		level = slog.LevelError
	}
	msg, _ := fields[zerolog.MessageFieldName].(string)
	delete(fields, zerolog.LevelFieldName)
	delete(fields, zerolog.MessageFieldName)
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, fields[k]))
	}
	w.l.LogAttrs(context.Background(), level, msg, attrs...)
	return len(p), nil
}
