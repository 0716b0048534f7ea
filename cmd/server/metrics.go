package main

import (
	"bytes"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/kvstore"
	"github.com/handoff-go/handoff/upgrade"
)

// metricsHandler serves this process's metrics in the Prometheus text
// format: the generation's own figures, read from its status at each
// scrape so that nothing is counted twice, and the Go runtime's and the
// process's, under the names Prometheus's Go client gives them.
//
// It writes the format itself rather than with that client: the client's
// packages (its default registry, procfs, protobuf) ran their
// initialisation in every new generation before main, a tenth of the CPU
// a generation spent to start (issue 16), for a page of text asked for a
// few times a minute.
func metricsHandler(upg *upgrade.Upgrader, st *kvstore.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var cache *kvstore.CacheStats
		if st != nil {
			cs := st.CacheStats()
			cache = &cs
		}
		var m metricsText
		m.status(upg.Status(), cache)
		m.goRuntime()
		m.process()
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		w.Write(m.Bytes())
	})
}

// metricsText is a page of the Prometheus text format (version 0.0.4).
type metricsText struct{ bytes.Buffer }

// family starts the metric family name, of type typ (counter, gauge,
// summary).
func (m *metricsText) family(name, typ, help string) {
	m.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " " + typ + "\n")
}

// sample writes one sample of the family name; labels are name and value
// pairs.
func (m *metricsText) sample(name string, v float64, labels ...string) {
	m.WriteString(name)
	if len(labels) > 0 {
		m.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				m.WriteByte(',')
			}
			m.WriteString(labels[i] + `="` + labelEscaper.Replace(labels[i+1]) + `"`)
		}
		m.WriteByte('}')
	}
	m.WriteByte(' ')
	m.Write(strconv.AppendFloat(nil, v, 'g', -1, 64))
	m.WriteByte('\n')
}

// one writes a family of a single sample without labels.
func (m *metricsText) one(name, typ, help string, v float64) {
	m.family(name, typ, help)
	m.sample(name, v)
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// status writes the generation's own metrics.
func (m *metricsText) status(st upgrade.Status, cache *kvstore.CacheStats) {
	m.one("handoff_generation", "gauge", "Generation of this process: 1 for the first, one more per handoff.", float64(st.Generation))
	perServer := []struct {
		name, typ, help string
		v               func(upgrade.ServerStatus) int64
	}{
		{"handoff_http_requests_total", "counter", "Requests this generation began to serve, by server (public, control, grpc).",
			func(s upgrade.ServerStatus) int64 { return s.Requests }},
		{"handoff_http_requests_in_flight", "gauge", "Requests being served now, by server.",
			func(s upgrade.ServerStatus) int64 { return s.InFlight }},
		{"handoff_connections_open", "gauge", "Connections open now, by server.",
			func(s upgrade.ServerStatus) int64 { return s.Connections }},
	}
	for _, f := range perServer {
		m.family(f.name, f.typ, f.help)
		for _, sv := range st.Servers {
			m.sample(f.name, float64(f.v(sv)), "server", sv.Name)
		}
	}
	m.family("handoff_upgrades_total", "counter", "Upgrade attempts over the life of the service, by result.")
	m.sample("handoff_upgrades_total", float64(st.Upgrades.Succeeded), "result", "succeeded")
	m.sample("handoff_upgrades_total", float64(st.Upgrades.Failed), "result", "failed")
	if d := st.LastDrain; d != nil {
		m.one("handoff_last_drain_duration_seconds", "gauge",
			"Duration of the last drain: this generation's, or the one it replaced.", time.Duration(d.Duration).Seconds())
		m.family("handoff_last_drain_closes", "gauge", "Connections closed by the last drain, by how.")
		for _, k := range []struct {
			kind string
			n    int64
		}{
			{"after_response", d.Closed.AfterResponse}, {"by_peer", d.Closed.ByPeer}, {"forced", d.Closed.Forced},
			{"hijacked", d.Closed.Hijacked}, {"http2", d.Closed.HTTP2}, {"idle", d.Closed.Idle},
		} {
			m.sample("handoff_last_drain_closes", float64(k.n), "kind", k.kind)
		}
	}
	m.one("handoff_uptime_seconds", "gauge", "Seconds since this generation started.", time.Duration(st.Uptime).Seconds())
	if cache != nil {
		m.one("handoff_cache_hits_total", "counter", "Reads served from the cache.", float64(cache.Hits))
		m.one("handoff_cache_misses_total", "counter", "Reads that went to the database.", float64(cache.Misses))
		m.one("handoff_cache_entries", "gauge", "Values in the cache now.", float64(cache.Entries))
	}
}

// goRuntime writes the Go runtime's metrics.
func (m *metricsText) goRuntime() {
	m.family("go_info", "gauge", "Information about the Go environment.")
	m.sample("go_info", 1, "version", runtime.Version())
	m.one("go_goroutines", "gauge", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine()))
	threads, _ := runtime.ThreadCreateProfile(nil)
	m.one("go_threads", "gauge", "Number of OS threads created.", float64(threads))
	m.one("go_sched_gomaxprocs_threads", "gauge", "The current runtime.GOMAXPROCS setting.", float64(runtime.GOMAXPROCS(0)))

	gc := debug.GCStats{PauseQuantiles: make([]time.Duration, 5)}
	debug.ReadGCStats(&gc)
	m.family("go_gc_duration_seconds", "summary", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.")
	for i, q := range []string{"0", "0.25", "0.5", "0.75", "1"} {
		m.sample("go_gc_duration_seconds", gc.PauseQuantiles[i].Seconds(), "quantile", q)
	}
	m.sample("go_gc_duration_seconds_sum", gc.PauseTotal.Seconds())
	m.sample("go_gc_duration_seconds_count", float64(gc.NumGC))

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	for _, s := range []struct {
		name, typ, help string
		v               uint64
	}{
		{"go_memstats_alloc_bytes", "gauge", "Number of heap bytes allocated and currently in use.", ms.Alloc},
		{"go_memstats_alloc_bytes_total", "counter", "Total number of heap bytes allocated, even if freed.", ms.TotalAlloc},
		{"go_memstats_sys_bytes", "gauge", "Number of bytes obtained from system.", ms.Sys},
		{"go_memstats_mallocs_total", "counter", "Total number of heap objects allocated, both live and gc-ed.", ms.Mallocs},
		{"go_memstats_frees_total", "counter", "Total number of heap objects frees.", ms.Frees},
		{"go_memstats_heap_alloc_bytes", "gauge", "Number of heap bytes allocated and currently in use.", ms.HeapAlloc},
		{"go_memstats_heap_sys_bytes", "gauge", "Number of heap bytes obtained from system.", ms.HeapSys},
		{"go_memstats_heap_idle_bytes", "gauge", "Number of heap bytes waiting to be used.", ms.HeapIdle},
		{"go_memstats_heap_inuse_bytes", "gauge", "Number of heap bytes that are in use.", ms.HeapInuse},
		{"go_memstats_heap_released_bytes", "gauge", "Number of heap bytes released to OS.", ms.HeapReleased},
		{"go_memstats_heap_objects", "gauge", "Number of currently allocated objects.", ms.HeapObjects},
		{"go_memstats_stack_inuse_bytes", "gauge", "Number of bytes obtained from system for stack allocator in non-CGO environments.", ms.StackInuse},
		{"go_memstats_stack_sys_bytes", "gauge", "Number of bytes obtained from system for stack allocator.", ms.StackSys},
		{"go_memstats_gc_sys_bytes", "gauge", "Number of bytes used for garbage collection system metadata.", ms.GCSys},
		{"go_memstats_next_gc_bytes", "gauge", "Number of heap bytes when next garbage collection will take place.", ms.NextGC},
	} {
		m.one(s.name, s.typ, s.help, float64(s.v))
	}
	m.one("go_memstats_last_gc_time_seconds", "gauge", "Number of seconds since 1970 of last garbage collection.",
		float64(ms.LastGC)/float64(time.Second))
}

// process writes the process's metrics, from getrusage, getrlimit and
// /proc/self; a figure the system does not give is left out.
func (m *metricsText) process() {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		m.one("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu.Seconds())
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		m.one("process_open_fds", "gauge", "Number of open file descriptors.", float64(len(fds)-1)) // less ReadDir's own
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		m.one("process_max_fds", "gauge", "Maximum number of open file descriptors.", float64(lim.Cur))
	}
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 2 {
			page := float64(os.Getpagesize())
			size, _ := strconv.ParseFloat(f[0], 64)
			rss, _ := strconv.ParseFloat(f[1], 64)
			m.one("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", size*page)
			m.one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss*page)
		}
	}
	if t, ok := processStart(); ok {
		m.one("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
			float64(t.UnixNano())/float64(time.Second))
	}
}

// processStart is when this process started: its start time in clock
// ticks since boot (/proc/self/stat) plus the boot time (/proc/stat).
func processStart() (time.Time, bool) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return time.Time{}, false
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from the last ')'. starttime is field 22, the 20th after it.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return time.Time{}, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return time.Time{}, false
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	procStat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, false
	}
	for line := range strings.SplitSeq(string(procStat), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			boot, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, false
			}
			const userHZ = 100 // USER_HZ, the unit of /proc's tick counts on Linux
			return time.Unix(boot, 0).Add(time.Duration(ticks) * time.Second / userHZ), true
		}
	}
	return time.Time{}, false
}
