package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// Restart latency, measured side by side on the same build, so that
// scripts/restart-latency.sh can print their ratios:
//
//   - BenchmarkRestartHandoff: SIGHUP, until the first answer from the new
//     generation. The minimal tableflip server of scripts/baseline
//     (tableflip's README example: the least a hot restart with tableflip
//     costs) runs beside it and is restarted in turn, each restart of one
//     followed by one of the other, so that both see the same machine;
//     its figures are reported with a tableflip- prefix, and ratio is the
//     handoff median over the tableflip median (the goal: at most 1.3).
//     The same server written with the upgrade package (scripts/minimal)
//     is restarted in turn with them: its figures have a minimal- prefix,
//     and library-ratio is its median over tableflip's, what the library
//     costs without the reference server's own start-up.
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
	servers := []*restarter{
		newRestarter(b, start(b, startOptions{args: []string{"-log-level", "info"}})),
		newRestarter(b, start(b, startOptions{binPath: scriptBinary(b, "baseline")})),
		newRestarter(b, start(b, startOptions{binPath: scriptBinary(b, "minimal")})),
	}
	servers[1].tableflip = true
	b.ResetTimer()
	for i := range b.N {
		for k := range servers {
			servers[(k+i)%len(servers)].restart(b, i+2) // rotate which goes first
		}
	}
	b.StopTimer()
	h, t, m := servers[0], servers[1], servers[2]
	report(b, h.took, h.failed, h.rss)
	reportAs(b, "tableflip-", t.took, t.failed, t.rss)
	reportAs(b, "minimal-", m.took, m.failed, m.rss)
	b.ReportMetric(float64(median(h.took))/float64(median(t.took)), "ratio")
	b.ReportMetric(float64(median(m.took))/float64(median(t.took)), "library-ratio")
}

// restarter restarts one server with SIGHUP and keeps the figures.
type restarter struct {
	s      *server
	pid    int
	rss    int
	c      *http.Client
	took   []time.Duration
	failed int
	// tableflip: the server is scripts/baseline, which refuses to upgrade
	// until it has seen its parent exit (it logs "parent exited" then);
	// the reference server queues such a request instead.
	tableflip bool
}

func newRestarter(b *testing.B, s *server) *restarter {
	pid := s.waitReady(1)
	return &restarter{s: s, pid: pid, rss: rssKiB(b, pid), c: pollClient()}
}

// restart starts generation gen, measures until its first answer, and
// returns once the last generation has exited.
func (r *restarter) restart(b *testing.B, gen int) {
	t0 := time.Now()
	r.s.signal(r.pid, syscall.SIGHUP)
	r.failed += waitAnswer(b, r.c, r.s.url("/"), strconv.Itoa(gen))
	r.took = append(r.took, time.Since(t0))
	next := r.s.waitReady(gen)
	r.s.waitExit(r.pid, time.Minute)
	if r.tableflip {
		r.s.logs.Wait(b, time.Minute, fmt.Sprintf("generation %d sees its parent exit", gen), func(l testkit.LogLine) bool {
			return l.Msg() == "parent exited" && l.Int("generation") == gen
		})
	}
	r.pid = next
}

var scripts struct {
	mu    sync.Mutex
	paths map[string]string
}

// scriptBinary builds the program scripts/name (baseline, minimal), once
// per run.
func scriptBinary(b *testing.B, name string) string {
	b.Helper()
	scripts.mu.Lock()
	defer scripts.mu.Unlock()
	if p, ok := scripts.paths[name]; ok {
		return p
	}
	p := filepath.Join(binDir, name)
	out, err := exec.Command("go", "build", "-o", p, "../scripts/"+name).CombinedOutput()
	if err != nil {
		b.Fatalf("build scripts/%s: %v\n%s", name, err, out)
	}
	if scripts.paths == nil {
		scripts.paths = map[string]string{}
	}
	scripts.paths[name] = p
	return p
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

// pollPause is the pause between two polls of waitAnswer: the resolution
// of a restart time.
const pollPause = time.Millisecond

func pollClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// waitAnswer polls url on new connections until a 200 comes from
// generation gen, and returns how many polls failed on the way. It pauses
// pollPause between polls: a poller that never pauses keeps a core busy,
// with the old generation answering it, on a machine whose other core is
// all the new generation has to start on.
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
			time.Sleep(pollPause)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Generation") == gen {
			return failed
		}
		time.Sleep(pollPause)
	}
	b.Fatalf("no answer from generation %s at %s within a minute", gen, url)
	return failed
}

func report(b *testing.B, took []time.Duration, failed int, rss int) {
	reportAs(b, "", took, failed, rss)
	b.ReportMetric(0, "ns/op") // wall time per op is the median above
}

func reportAs(b *testing.B, prefix string, took []time.Duration, failed int, rss int) {
	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(median(took)), prefix+"median-ms")
	b.ReportMetric(ms(took[len(took)*9/10]), prefix+"p90-ms")
	b.ReportMetric(float64(failed), prefix+"failed-polls")
	b.ReportMetric(float64(rss), prefix+"idle-rss-KiB")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
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
