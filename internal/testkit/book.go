package testkit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"
)

// Book collects entries as they come, from any goroutine, and lets a test
// wait for one that matches. The zero Book is empty and ready to use.
type Book[T any] struct {
	mu      sync.Mutex
	entries []T
	changed chan struct{} // closed and replaced on every Add, and on Close
	done    chan struct{} // closed by Close
	why     error         // what Await says once the book is closed
}

// init makes the channels of a zero Book. b.mu must be held.
func (b *Book[T]) init() {
	if b.changed == nil {
		b.changed = make(chan struct{})
		b.done = make(chan struct{})
	}
}

// Add appends e and wakes every waiter.
func (b *Book[T]) Add(e T) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	b.entries = append(b.entries, e)
	close(b.changed)
	b.changed = make(chan struct{})
}

// Close says that no entry will come any more: a wait for one that has not
// come then ends at once, with why (or a general error when why is nil).
// Close may be called more than once; the first why counts.
func (b *Book[T]) Close(why error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	select {
	case <-b.done:
		return
	default:
	}
	if why == nil {
		why = errors.New("no more entries will come")
	}
	b.why = why
	close(b.done)
	close(b.changed)
	b.changed = make(chan struct{})
}

// Done returns a channel closed by Close.
func (b *Book[T]) Done() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	return b.done
}

// All returns a copy of the entries so far.
func (b *Book[T]) All() []T {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]T(nil), b.entries...)
}

// Len returns how many entries have come.
func (b *Book[T]) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.entries)
}

// Find returns the entries so far that match.
func (b *Book[T]) Find(match func(T) bool) []T {
	var out []T
	for _, e := range b.All() {
		if match(e) {
			out = append(out, e)
		}
	}
	return out
}

// Await returns the first entry that matches, among those that came and
// those that come within timeout. When none does, the error says whether
// the time ran out or the book was closed first.
func (b *Book[T]) Await(timeout time.Duration, match func(T) bool) (T, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	seen := 0
	for {
		b.mu.Lock()
		b.init()
		fresh := b.entries[seen:]
		changed := b.changed
		why := b.why // set once closed; no entry comes after it
		b.mu.Unlock()
		for _, e := range fresh {
			if match(e) {
				return e, nil
			}
		}
		seen += len(fresh)
		if why != nil {
			var zero T
			return zero, why
		}
		select {
		case <-changed: // a new entry, or Close
		case <-timer.C:
			var zero T
			return zero, fmt.Errorf("not seen within %v", timeout)
		}
	}
}

// Wait is Await that fails the test when no entry matches:
//
//	waiting for generation 2 ready: not seen within 2m0s
func (b *Book[T]) Wait(t testing.TB, timeout time.Duration, what string, match func(T) bool) T {
	t.Helper()
	e, err := b.Await(timeout, match)
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
	return e
}

// LogLine is one line of a JSON log: its fields and its text. A line that
// is not JSON has two fields: "message", its text, and "level", "raw".
type LogLine struct {
	Fields map[string]any
	Raw    string
}

// ParseLogLine parses one line of a JSON log; isJSON says whether it was
// a JSON object.
func ParseLogLine(raw string) (l LogLine, isJSON bool) {
	l = LogLine{Raw: raw}
	if json.Unmarshal([]byte(raw), &l.Fields) != nil || l.Fields == nil {
		l.Fields = map[string]any{"message": raw, "level": "raw"}
		return l, false
	}
	return l, true
}

// Msg is the event's message.
func (l LogLine) Msg() string { return l.Str("message") }

// Str is the string field key, "" when absent or not a string.
func (l LogLine) Str(key string) string {
	v, _ := l.Fields[key].(string)
	return v
}

// Int is the number field key, 0 when absent or not a number.
func (l LogLine) Int(key string) int {
	v, _ := l.Fields[key].(float64)
	return int(v)
}

// LogBook is the book of a JSON log.
type LogBook = Book[LogLine]

// ErrLogEnded is why a wait on a book of ReadLog ends before its deadline:
// the log ended, as it does when every process writing it has exited.
var ErrLogEnded = errors.New("the log ended: every process writing it exited")

// ReadLog reads r line by line, as JSON log events, into a new book, until
// r ends; it then closes r and the book (with ErrLogEnded). onLine, when
// not nil, sees each line before the book has it, on the reading
// goroutine.
func ReadLog(r io.ReadCloser, onLine func(LogLine)) *LogBook {
	b := &LogBook{}
	go func() { // ends when every writer has closed r
		defer b.Close(ErrLogEnded)
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l, _ := ParseLogLine(sc.Text())
			if onLine != nil {
				onLine(l)
			}
			b.Add(l)
		}
	}()
	return b
}
