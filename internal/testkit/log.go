package testkit

import (
	"io"
	"testing"

	"github.com/rs/zerolog"
)

// Logger is a logger that writes to the test's log, which go test shows
// for a failed test, or with -v.
func Logger(t testing.TB) zerolog.Logger {
	return zerolog.New(LogWriter(t))
}

// LogWriter writes each Write to the test's log, as one entry without its
// trailing newline. Nothing may write to it once the test has ended.
func LogWriter(t testing.TB) io.Writer {
	return zerolog.NewTestWriter(t)
}
