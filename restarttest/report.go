package restarttest

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxExamples is how many failures a report quotes.
const maxExamples = 20

// Request is one request in the timeline. Times are since the kit
// started.
type Request struct {
	Client  int
	Mode    Mode
	kind    kind
	Start   time.Duration
	End     time.Duration
	Outcome Outcome
	Status  int    // HTTP status; zero when no answer came
	Gen     string // the generation header of the answer
}

// What is the request: "GET", "POST", "GET slow" or "Check" (gRPC).
func (r Request) What() string { return kindPaths[r.kind] }

// Slow reports whether the request was of Config.SlowPath.
func (r Request) Slow() bool { return r.kind == kindSlow }

// Latency is how long the request took.
func (r Request) Latency() time.Duration { return r.End - r.Start }

// Answered reports whether the server answered (any status).
func (r Request) Answered() bool { return r.Status != 0 }

type requestJSON struct {
	Client    int     `json:"client"`
	Mode      Mode    `json:"mode"`
	What      string  `json:"what"`
	StartMS   float64 `json:"start_ms"`
	EndMS     float64 `json:"end_ms"`
	LatencyMS float64 `json:"latency_ms"`
	Outcome   Outcome `json:"outcome"`
	Status    int     `json:"status,omitempty"`
	Gen       string  `json:"gen,omitempty"`
}

// MarshalJSON writes times in milliseconds.
func (r Request) MarshalJSON() ([]byte, error) {
	return json.Marshal(requestJSON{r.Client, r.Mode, r.What(), ms(r.Start), ms(r.End), ms(r.Latency()), r.Outcome, r.Status, r.Gen})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// RestartEvent is one restart.
type RestartEvent struct {
	Index      int
	Start, End time.Duration
	Err        string // empty when it succeeded
}

// MarshalJSON writes times in milliseconds.
func (e RestartEvent) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Index   int     `json:"index"`
		StartMS float64 `json:"start_ms"`
		EndMS   float64 `json:"end_ms"`
		Err     string  `json:"error,omitempty"`
	}{e.Index, ms(e.Start), ms(e.End), e.Err})
}

// GenerationEvent is one generation: counted by the header, At is the end
// of its first answer; counted by processes, At is when its process was
// first seen holding the listening socket.
type GenerationEvent struct {
	ID  string // header value, or "pid N"
	PID int    // zero when counted by the header
	At  time.Duration
}

// MarshalJSON writes times in milliseconds.
func (g GenerationEvent) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ID   string  `json:"id"`
		PID  int     `json:"pid,omitempty"`
		AtMS float64 `json:"at_ms"`
	}{g.ID, g.PID, ms(g.At)})
}

// Counts is a number of requests per outcome.
type Counts [numOutcomes]int

// Total is the number of requests.
func (c *Counts) Total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// Failed is the number of requests whose outcome is not OK.
func (c *Counts) Failed() int { return c.Total() - c[OK] }

// MarshalJSON writes the outcomes that occurred, by name.
func (c *Counts) MarshalJSON() ([]byte, error) {
	m := map[string]int{}
	for o, v := range c {
		if v > 0 {
			m[Outcome(o).String()] = v
		}
	}
	return json.Marshal(m)
}

// Report is what a check found.
type Report struct {
	// Title heads the plot; Check sets it to the server command.
	Title   string
	URL     string
	Modes   []Mode
	Started time.Time
	Elapsed time.Duration

	Requests, Failed int
	// Restarts is how many restarts were done (failed ones included).
	Restarts int
	// RestartErrors says how each failed restart failed.
	RestartErrors []string
	// Generations is how many distinct generations answered (by the
	// header), or how many processes held the listening socket.
	Generations int
	// GenerationsBy is "header X" or "processes".
	GenerationsBy string
	Outcomes      Counts
	ByMode        map[Mode]*Counts
	// GRPCTransparentRetries counts the RPC attempts grpc-go made again
	// by itself after the server refused them unprocessed.
	GRPCTransparentRetries int
	// Examples quotes the first failures.
	Examples []string
	// Err says why the check could not run to its end, when it could not
	// (the error Check returned).
	Err string

	// The timeline.
	Timeline    []Request
	RestartLog  []RestartEvent
	GenLog      []GenerationEvent
	LoadStarted time.Duration
	LoadEnded   time.Duration
}

// OK reports whether the check passed: it ran to its end, no request
// failed, no restart failed, and at least Restarts+1 generations were seen.
func (r *Report) OK() bool {
	return r.Err == "" && r.Failed == 0 && len(r.RestartErrors) == 0 && r.Generations >= r.Restarts+1
}

// Line is the one-line verdict: requests=N failed=M restarts=R generations=G.
func (r *Report) Line() string {
	return fmt.Sprintf("requests=%d failed=%d restarts=%d generations=%d", r.Requests, r.Failed, r.Restarts, r.Generations)
}

// Summary is a readable account: a table of outcomes by client mode, the
// failed restarts, the first failures, and the verdict, then Line.
func (r *Report) Summary() string {
	var b strings.Builder
	// Columns: ok, then the failure kinds that occurred.
	cols := []Outcome{OK}
	for o := OK + 1; o < numOutcomes; o++ {
		if r.Outcomes[o] > 0 {
			cols = append(cols, o)
		}
	}
	fmt.Fprintf(&b, "%-12s %10s", "mode", "requests")
	for _, o := range cols {
		fmt.Fprintf(&b, " %14s", o)
	}
	b.WriteByte('\n')
	modes := slices.Sorted(maps.Keys(r.ByMode))
	for _, m := range modes {
		c := r.ByMode[m]
		fmt.Fprintf(&b, "%-12s %10d", m, c.Total())
		for _, o := range cols {
			fmt.Fprintf(&b, " %14d", c[o])
		}
		b.WriteByte('\n')
	}
	if r.GRPCTransparentRetries > 0 {
		fmt.Fprintf(&b, "grpc-go retried %d RPCs transparently (refused unprocessed by the server)\n", r.GRPCTransparentRetries)
	}
	for _, e := range r.RestartErrors {
		fmt.Fprintf(&b, "restart failed: %s\n", e)
	}
	if len(r.Examples) > 0 {
		fmt.Fprintf(&b, "first failures (ms since start):\n")
		for _, e := range r.Examples {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	fmt.Fprintf(&b, "generations counted by %s; %s\n", r.GenerationsBy, r.verdict())
	b.WriteString(r.Line())
	b.WriteByte('\n')
	return b.String()
}

func (r *Report) verdict() string {
	var why []string
	if r.Err != "" {
		why = append(why, "the check did not run to its end: "+r.Err)
	}
	if r.Failed > 0 {
		why = append(why, fmt.Sprintf("%d of %d requests failed", r.Failed, r.Requests))
	}
	if n := len(r.RestartErrors); n > 0 {
		why = append(why, fmt.Sprintf("%d restarts failed", n))
	}
	if r.Generations < r.Restarts+1 {
		why = append(why, fmt.Sprintf("%d generations seen, want at least %d (restarts+1)", r.Generations, r.Restarts+1))
	}
	if len(why) == 0 {
		return "PASS"
	}
	return "FAIL: " + strings.Join(why, "; ")
}

// WriteJSON writes the report with its whole timeline.
func (r *Report) WriteJSON(w io.Writer) error {
	byMode := map[Mode]*Counts{}
	maps.Copy(byMode, r.ByMode)
	v := struct {
		URL                    string            `json:"url"`
		Modes                  []Mode            `json:"modes"`
		Started                time.Time         `json:"started"`
		ElapsedMS              float64           `json:"elapsed_ms"`
		Requests               int               `json:"requests"`
		Failed                 int               `json:"failed"`
		Restarts               int               `json:"restarts"`
		Generations            int               `json:"generations"`
		GenerationsBy          string            `json:"generations_by"`
		OK                     bool              `json:"ok"`
		Err                    string            `json:"error,omitempty"`
		Outcomes               *Counts           `json:"outcomes"`
		ByMode                 map[Mode]*Counts  `json:"by_mode"`
		RestartErrors          []string          `json:"restart_errors,omitempty"`
		GRPCTransparentRetries int               `json:"grpc_transparent_retries"`
		Examples               []string          `json:"examples,omitempty"`
		LoadStartMS            float64           `json:"load_start_ms"`
		LoadEndMS              float64           `json:"load_end_ms"`
		RestartLog             []RestartEvent    `json:"restart_log"`
		GenLog                 []GenerationEvent `json:"generation_log"`
		Timeline               []Request         `json:"requests_log"`
	}{r.URL, r.Modes, r.Started, ms(r.Elapsed), r.Requests, r.Failed, r.Restarts, r.Generations, r.GenerationsBy, r.OK(), r.Err,
		&r.Outcomes, byMode, r.RestartErrors, r.GRPCTransparentRetries, r.Examples, ms(r.LoadStarted), ms(r.LoadEnded), r.RestartLog, r.GenLog, r.Timeline}
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

// recorder collects the requests of every client.
type recorder struct {
	t0          time.Time
	byHeader    bool
	grpcRetries atomic.Int64

	mu       sync.Mutex
	reqs     []Request
	examples []string
	firstGen map[string]time.Duration // header value → end of its first OK answer
}

func newRecorder(t0 time.Time, byHeader bool) *recorder {
	return &recorder{t0: t0, byHeader: byHeader, firstGen: map[string]time.Duration{}}
}

func (r *recorder) add(q Request, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, q)
	if q.Outcome != OK && len(r.examples) < maxExamples {
		r.examples = append(r.examples, fmt.Sprintf("%9.1f %s client %d %s: %s: %s", ms(q.Start), q.Mode, q.Client, q.What(), q.Outcome, detail))
	}
	if q.Outcome == OK && q.Gen != "" {
		if at, ok := r.firstGen[q.Gen]; !ok || q.End < at {
			r.firstGen[q.Gen] = q.End
		}
	}
}

// generations is how many generations have answered so far.
func (r *recorder) generations() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.firstGen)
}

// fill completes a report with what was recorded.
func (r *recorder) fill(rep *Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep.Timeline = slices.Clone(r.reqs)
	slices.SortStableFunc(rep.Timeline, func(a, b Request) int { return int(a.Start - b.Start) })
	rep.Examples = slices.Clone(r.examples)
	rep.ByMode = map[Mode]*Counts{}
	for _, q := range rep.Timeline {
		rep.Outcomes[q.Outcome]++
		c := rep.ByMode[q.Mode]
		if c == nil {
			c = &Counts{}
			rep.ByMode[q.Mode] = c
		}
		c[q.Outcome]++
	}
	rep.Requests, rep.Failed = rep.Outcomes.Total(), rep.Outcomes.Failed()
	rep.GRPCTransparentRetries = int(r.grpcRetries.Load())
	if r.byHeader {
		for id, at := range r.firstGen {
			rep.GenLog = append(rep.GenLog, GenerationEvent{ID: id, At: at})
		}
		slices.SortFunc(rep.GenLog, func(a, b GenerationEvent) int {
			if a.At != b.At {
				return int(a.At - b.At)
			}
			return strings.Compare(a.ID, b.ID)
		})
		rep.Generations = len(rep.GenLog)
	}
}
