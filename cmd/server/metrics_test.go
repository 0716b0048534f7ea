package main

import (
	"bufio"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/kvstore"
	"github.com/handoff-go/handoff/upgrade"
)

// sampleLine is one sample of the Prometheus text format: a name, labels
// whose values escape \, " and newline, and a number.
var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\[\\"n]|[^\\"\n])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(\\[\\"n]|[^\\"\n])*")*)\})? (\S+)$`)

// The metrics page is written by hand (issue 16): it must be the text
// format Prometheus reads, with the series the README names.
func TestMetricsText(t *testing.T) {
	st := upgrade.Status{
		Generation: 3,
		Uptime:     upgrade.Duration(90 * time.Second),
		Servers: []upgrade.ServerStatus{
			{Name: "public", Requests: 12, InFlight: 2, Connections: 5},
			{Name: `odd "name" \ here`, Requests: 1, Control: true},
		},
		Upgrades:  upgrade.UpgradeCounts{Succeeded: 2, Failed: 1},
		LastDrain: &upgrade.DrainRecord{Duration: upgrade.Duration(1500 * time.Millisecond), Closed: upgrade.CloseCounts{Forced: 1, Idle: 4}},
	}
	var m metricsText
	m.status(st, &kvstore.CacheStats{Hits: 7, Misses: 3, Entries: 4})
	m.goRuntime()
	m.process()

	families := map[string]string{} // name -> type
	helped := map[string]bool{}
	values := map[string]float64{} // series -> value
	sc := bufio.NewScanner(strings.NewReader(m.String()))
	for sc.Scan() {
		line := sc.Text()
		if h, ok := strings.CutPrefix(line, "# HELP "); ok {
			name, _, _ := strings.Cut(h, " ")
			if helped[name] {
				t.Errorf("HELP of %s twice", name)
			}
			helped[name] = true
			continue
		}
		if ty, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(ty, " ")
			if _, dup := families[name]; dup || !helped[name] {
				t.Errorf("TYPE of %s: repeated, or without its HELP first", name)
			}
			families[name] = typ
			continue
		}
		g := sampleLine.FindStringSubmatch(line)
		if g == nil {
			t.Errorf("line %q is not a sample of the text format", line)
			continue
		}
		family := g[1]
		if families[family] == "" {
			family = strings.TrimSuffix(strings.TrimSuffix(family, "_sum"), "_count")
		}
		if families[family] == "" {
			t.Errorf("sample %q comes before the TYPE of its family", line)
		}
		v, err := strconv.ParseFloat(g[len(g)-1], 64)
		if err != nil {
			t.Errorf("sample %q: value: %v", line, err)
		}
		series := g[1] + g[2]
		if _, dup := values[series]; dup {
			t.Errorf("series %s twice", series)
		}
		values[series] = v
	}

	want := map[string]float64{
		`handoff_generation`:                                         3,
		`handoff_http_requests_total{server="public"}`:               12,
		`handoff_http_requests_total{server="odd \"name\" \\ here"}`: 1,
		`handoff_http_requests_in_flight{server="public"}`:           2,
		`handoff_connections_open{server="public"}`:                  5,
		`handoff_upgrades_total{result="succeeded"}`:                 2,
		`handoff_upgrades_total{result="failed"}`:                    1,
		`handoff_last_drain_duration_seconds`:                        1.5,
		`handoff_last_drain_closes{kind="forced"}`:                   1,
		`handoff_last_drain_closes{kind="idle"}`:                     4,
		`handoff_uptime_seconds`:                                     90,
		`handoff_cache_hits_total`:                                   7,
		`handoff_cache_misses_total`:                                 3,
		`handoff_cache_entries`:                                      4,
	}
	for series, v := range want {
		if got, ok := values[series]; !ok || got != v {
			t.Errorf("%s = %v (present: %v), want %v", series, got, ok, v)
		}
	}
	for _, series := range []string{
		"go_goroutines", "go_threads", "go_memstats_mallocs_total", "go_memstats_heap_alloc_bytes",
		`go_gc_duration_seconds{quantile="0.5"}`, "go_gc_duration_seconds_count",
		"process_cpu_seconds_total", "process_open_fds", "process_max_fds", "process_resident_memory_bytes",
	} {
		if values[series] <= 0 && !strings.HasPrefix(series, "go_gc_") {
			t.Errorf("%s = %v, want a positive figure", series, values[series])
		}
		if _, ok := values[series]; !ok {
			t.Errorf("no %s", series)
		}
	}
	if start := values["process_start_time_seconds"]; time.Since(time.Unix(int64(start), 0)) > time.Hour || start > float64(time.Now().Unix()+1) {
		t.Errorf("process_start_time_seconds = %v, want this process's start (now is %d)", start, time.Now().Unix())
	}
}
