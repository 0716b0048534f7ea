package e2e

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Restart latency, measured two ways side by side on the same build, so
// that scripts/restart-latency.sh can print their ratio:
//
//   - BenchmarkRestartHandoff: SIGHUP, until the first answer from the new
//     generation.
//   - BenchmarkRestartStopStart: the baseline without handoff, SIGTERM,
//     wait for exit, start the binary again, until its first answer.
//   - BenchmarkRestartSupervised: the same as BenchmarkRestartHandoff in
//     supervisor mode (server -supervise): SIGHUP to the supervisor, until
//     the first answer from the new generation. It also reports the
//     supervisor's RSS.
//
// Each reports the median and p90 in milliseconds, the requests that
// failed while polling (refused connections and the like), and the idle
// RSS of a generation.

func BenchmarkRestartHandoff(b *testing.B) {
	s := start(b, startOptions{args: []string{"-log-level", "info"}})
	pid := s.waitReady(1)
	rss := rssKiB(b, pid)
	c := pollClient()
	var took []time.Duration
	failed := 0
	b.ResetTimer()
	for i := range b.N {
		gen := i + 2
		t0 := time.Now()
		s.signal(pid, syscall.SIGHUP)
		failed += waitAnswer(b, c, s.url("/"), strconv.Itoa(gen))
		took = append(took, time.Since(t0))
		next := s.waitReady(gen)
		s.waitExit(pid, time.Minute)
		pid = next
	}
	b.StopTimer()
	report(b, took, failed, rss)
}

func BenchmarkRestartStopStart(b *testing.B) {
	dir := shortTempDir(b)
	addr := freeAddr(b)
	s := start(b, startOptions{dir: dir, addr: addr, args: []string{"-log-level", "info"}})
	pid := s.waitReady(1)
	rss := rssKiB(b, pid)
	c := pollClient()
	var took []time.Duration
	failed := 0
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		s.signal(pid, syscall.SIGTERM)
		s.waitExit(pid, time.Minute)
		s = start(b, startOptions{dir: dir, addr: addr, args: []string{"-log-level", "info"}, noWait: true})
		failed += waitAnswer(b, c, s.url("/"), "1")
		took = append(took, time.Since(t0))
		pid = s.waitReady(1)
	}
	b.StopTimer()
	report(b, took, failed, rss)
}

func BenchmarkRestartSupervised(b *testing.B) {
	s := start(b, startOptions{supervise: true, args: []string{"-log-level", "info"}})
	sup := s.supervisorPID()
	rss := rssKiB(b, s.waitReady(1))
	c := pollClient()
	var took []time.Duration
	failed := 0
	b.ResetTimer()
	for i := range b.N {
		gen := i + 2
		t0 := time.Now()
		s.signal(sup, syscall.SIGHUP)
		failed += waitAnswer(b, c, s.url("/"), strconv.Itoa(gen))
		took = append(took, time.Since(t0))
		s.waitReady(gen)
		if st := s.genExit(gen - 1); st != "exit status 0" {
			b.Fatalf("generation %d after handing over: %s", gen-1, st)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(rssKiB(b, sup)), "supervisor-rss-KiB")
	report(b, took, failed, rss)
}

func pollClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// waitAnswer polls url on new connections until a 200 comes from
// generation gen, and returns how many polls failed on the way.
func waitAnswer(b *testing.B, c *http.Client, url, gen string) int {
	b.Helper()
	failed := 0
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := c.Get(url)
		if err != nil {
			if gen != "1" {
				b.Logf("poll for generation %s: %v", gen, err)
			}
			failed++
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Generation") == gen {
			return failed
		}
	}
	b.Fatalf("no answer from generation %s within a minute", gen)
	return failed
}

func report(b *testing.B, took []time.Duration, failed int, rss int) {
	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(took[len(took)/2]), "median-ms")
	b.ReportMetric(ms(took[len(took)*9/10]), "p90-ms")
	b.ReportMetric(float64(failed), "failed-polls")
	b.ReportMetric(float64(rss), "idle-rss-KiB")
	b.ReportMetric(0, "ns/op") // wall time per op is the median above
}

// rssKiB reads the resident set size of pid.
func rssKiB(b testing.TB, pid int) int {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}
