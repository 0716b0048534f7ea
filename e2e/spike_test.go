package e2e

import (
	"io"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The latency spike of a restart, side by side for the reference server
// and the minimal tableflip server (scripts/restart-latency.sh prints
// both): a light load of fast requests (GET /, keep-alive, a few clients
// with a pause between requests) runs throughout; every restart is
// followed by a window of spikeWindow in which the slowest request is the
// restart's spike, then by a control window as long without a restart,
// whose slowest request is what the machine alone makes of a window.
// Requests that started outside every restart window are the steady ones.
// Each reports:
//
//   - steady-p99-ms: the 99th percentile of the steady requests;
//   - spike-ms: the median over the restarts of each one's slowest request;
//   - worst-spike-ms: the slowest request of any restart window;
//   - spike-ratio: spike-ms / steady-p99-ms (the goal: ≤ 1.5 on a quiet
//     machine);
//   - control-ms, control-ratio: the same for the control windows. The
//     slowest of a thousand requests is slower than their p99 on any
//     machine; on a busy one, by far. A spike-ratio near control-ratio is
//     the machine, not the restart.
//   - failed-requests: requests that got no 200, in or out of a window.

// spikeWindow is how long after a SIGHUP a request counts as after a
// restart.
const spikeWindow = 2 * time.Second

// spikeClients and spikePause make the light load: about
// spikeClients/spikePause requests a second.
const (
	spikeClients = 4
	spikePause   = 5 * time.Millisecond
)

func BenchmarkSpikeHandoff(b *testing.B) {
	benchSpike(b, start(b, startOptions{args: []string{"-log-level", "info"}}))
}

func BenchmarkSpikeTableflip(b *testing.B) {
	benchSpike(b, start(b, startOptions{binPath: scriptBinary(b, "baseline")}))
}

func benchSpike(b *testing.B, s *server) {
	pid := s.waitReady(1)
	ld := startFastLoad(s.url("/"))
	// A steady stretch before the first restart.
	time.Sleep(spikeWindow)
	var restarts []time.Time
	b.ResetTimer()
	for i := range b.N {
		gen := i + 2
		t0 := time.Now()
		restarts = append(restarts, t0)
		s.signal(pid, syscall.SIGHUP)
		next := s.waitReady(gen)
		s.waitExit(pid, time.Minute)
		pid = next
		// The restart's window, then the control window.
		time.Sleep(time.Until(t0.Add(2 * spikeWindow)))
	}
	b.StopTimer()
	samples := ld.stop()

	var steady []time.Duration
	spikes := make([]time.Duration, len(restarts))
	controls := make([]time.Duration, len(restarts))
	failed := 0
	for _, sm := range samples {
		if !sm.ok {
			failed++
			continue
		}
		in, control := -1, -1
		for j, r := range restarts {
			switch {
			case sm.start.Before(r):
			case sm.start.Before(r.Add(spikeWindow)):
				in = j
			case sm.start.Before(r.Add(2 * spikeWindow)):
				control = j
			}
		}
		if in < 0 {
			steady = append(steady, sm.took)
		} else {
			spikes[in] = max(spikes[in], sm.took)
		}
		if control >= 0 {
			controls[control] = max(controls[control], sm.took)
		}
	}
	if len(steady) < 100 {
		b.Fatalf("only %d steady requests: too few for a p99", len(steady))
	}
	slices.Sort(steady)
	p99 := steady[len(steady)*99/100]
	worst := slices.Max(spikes)
	slices.Sort(spikes)
	spike := spikes[len(spikes)/2]
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(p99), "steady-p99-ms")
	b.ReportMetric(ms(spike), "spike-ms")
	b.ReportMetric(ms(worst), "worst-spike-ms")
	b.ReportMetric(ms(spike)/ms(p99), "spike-ratio")
	slices.Sort(controls)
	control := controls[len(controls)/2]
	b.ReportMetric(ms(control), "control-ms")
	b.ReportMetric(ms(control)/ms(p99), "control-ratio")
	b.ReportMetric(float64(failed), "failed-requests")
	b.ReportMetric(float64(len(samples)), "requests")
	b.ReportMetric(0, "ns/op")
}

// sample is one request of the fast load.
type sample struct {
	start time.Time
	took  time.Duration
	ok    bool
}

// fastLoad is spikeClients clients, each on a keep-alive connection of
// its own, sending GET requests one after another with spikePause
// between them, until stop.
type fastLoad struct {
	stopC chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	all   []sample
}

func startFastLoad(url string) *fastLoad {
	ld := &fastLoad{stopC: make(chan struct{})}
	for range spikeClients {
		ld.wg.Add(1)
		go func() { // ends at stop
			defer ld.wg.Done()
			tr := &http.Transport{MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			c := &http.Client{Timeout: 5 * time.Second, Transport: tr}
			var mine []sample
			defer func() {
				ld.mu.Lock()
				ld.all = append(ld.all, mine...)
				ld.mu.Unlock()
			}()
			// Bounded: at most ten minutes of requests.
			for end := time.Now().Add(10 * time.Minute); time.Now().Before(end); {
				t0 := time.Now()
				resp, err := c.Get(url)
				ok := err == nil && resp.StatusCode == http.StatusOK
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					ok = ok && err == nil
					resp.Body.Close()
				}
				mine = append(mine, sample{start: t0, took: time.Since(t0), ok: ok})
				select {
				case <-ld.stopC:
					return
				case <-time.After(spikePause):
				}
			}
		}()
	}
	return ld
}

// stop ends the load and returns every request it sent.
func (ld *fastLoad) stop() []sample {
	close(ld.stopC)
	ld.wg.Wait()
	return ld.all
}
