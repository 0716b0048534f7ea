package e2e

import (
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"
)

// BenchmarkUpgradeSoak upgrades the reference server b.N times in a row
// under a light keep-alive load (the fast load of the spike benchmark),
// and samples the serving generation's open file descriptors and RSS
// just before each upgrade, once it has served for a moment. A leak that
// one generation hands the next (a descriptor, state that grows) shows as
// a count that climbs with the generation. It reports the first, the
// median and the last sample of each, and the requests of the load that
// failed. It is long (about a quarter of a second per upgrade): run it
// through scripts/upgrade-soak.sh, never in the normal test run.
func BenchmarkUpgradeSoak(b *testing.B) {
	s := start(b, startOptions{args: []string{"-log-level", "info", "-idle-grace", "200ms", "-close-spread", "100ms"}})
	pid := s.waitReady(1)
	ld := startFastLoad(s.url("/"))
	var fds, rss []int
	sample := func(pid int) {
		// Let the generation serve the load for a moment first.
		time.Sleep(50 * time.Millisecond)
		fds = append(fds, fdCount(b, pid))
		rss = append(rss, rssKiB(b, pid))
	}
	b.ResetTimer()
	for i := range b.N {
		sample(pid)
		gen := i + 2
		s.signal(pid, syscall.SIGHUP)
		next := s.waitReady(gen)
		if st := s.waitExit(pid, time.Minute); st != 0 {
			b.Fatalf("generation %d (pid %d) exit status after handoff = %d, want 0", gen-1, pid, st)
		}
		pid = next
	}
	sample(pid)
	b.StopTimer()
	failed := 0
	samples := ld.stop()
	for _, sm := range samples {
		if !sm.ok {
			failed++
		}
	}
	first, mid, last := spread(fds)
	b.ReportMetric(float64(first), "fds-first")
	b.ReportMetric(float64(mid), "fds-median")
	b.ReportMetric(float64(last), "fds-last")
	first, mid, last = spread(rss)
	b.ReportMetric(float64(first), "rss-KiB-first")
	b.ReportMetric(float64(mid), "rss-KiB-median")
	b.ReportMetric(float64(last), "rss-KiB-last")
	b.ReportMetric(float64(slices.Max(rss)), "rss-KiB-max")
	b.ReportMetric(float64(failed), "failed-requests")
	b.ReportMetric(float64(len(samples)), "requests")
	b.ReportMetric(0, "ns/op")
}

// spread returns the first, median and last of v.
func spread(v []int) (first, median, last int) {
	s := slices.Clone(v)
	slices.Sort(s)
	return v[0], s[len(s)/2], v[len(v)-1]
}

// fdCount counts the open file descriptors of pid.
func fdCount(b testing.TB, pid int) int {
	b.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		b.Fatal(err)
	}
	return len(ents)
}
