package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is what one run measures.
type config struct {
	server   string
	compare  string
	rounds   int
	duration time.Duration
	conns    int
	streams  int
	protos   []string
	logDir   string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("steady", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = usageFunc(fs)
	fs.StringVar(&c.server, "server", "", "`path` of the reference server binary (go build ./cmd/server)")
	fs.StringVar(&c.compare, "compare", "", "`path` of another build of the reference server to run beside it (say, before a change), shown as \"compare\"")
	fs.IntVar(&c.rounds, "rounds", 5, "rounds; each loads every server once per protocol")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "length of each load run")
	fs.IntVar(&c.conns, "conns", 16, "connections (wrk -c, h2load -c)")
	fs.IntVar(&c.streams, "streams", 1, "concurrent streams per h2c connection (h2load -m)")
	proto := fs.String("proto", "h1,h2c", "protocols, comma-separated: h1 (wrk), h2c (h2load)")
	fs.StringVar(&c.logDir, "log-dir", "", "`directory` for the servers' logs (a temporary one, removed after, when empty)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q: steady takes only flags", fs.Arg(0))
	case c.server == "":
		return nil, errors.New("-server is required: the path of a built cmd/server")
	case c.rounds < 1 || c.rounds > 50:
		return nil, fmt.Errorf("-rounds %d: use 1 to 50", c.rounds)
	case c.duration < time.Second || c.duration > 5*time.Minute:
		return nil, fmt.Errorf("-duration %v: use 1s to 5m", c.duration)
	case c.conns < 1 || c.conns > 1000:
		return nil, fmt.Errorf("-conns %d: use 1 to 1000", c.conns)
	case c.streams < 1 || c.streams > 100:
		return nil, fmt.Errorf("-streams %d: use 1 to 100", c.streams)
	}
	for _, p := range strings.Split(*proto, ",") {
		if p != "h1" && p != "h2c" {
			return nil, fmt.Errorf("-proto %q: want h1, h2c or both, comma-separated", *proto)
		}
		c.protos = append(c.protos, p)
	}
	return c, nil
}

// target is one server under test.
type target struct {
	name    string
	addr    string
	cmd     *exec.Cmd
	exited  chan struct{}
	mallocs func(context.Context) (uint64, error)
	// readCost is what reading mallocs allocates in the server itself
	// (a /metrics scrape of the reference server is thousands), taken
	// off each run's count.
	readCost uint64
}

// mallocsReadCost reads the allocation count a few times in a row and
// returns the smallest difference: what one read allocates.
func (t *target) mallocsReadCost(ctx context.Context) (uint64, error) {
	prev, err := t.mallocs(ctx)
	if err != nil {
		return 0, err
	}
	cost := uint64(1 << 62)
	for range 5 {
		m, err := t.mallocs(ctx)
		if err != nil {
			return 0, err
		}
		cost = min(cost, m-prev)
		prev = m
	}
	return cost, nil
}

// result is one load run against one target.
type result struct {
	round    int
	proto    string
	target   string
	reqs     int64
	rps      float64
	errors   int64
	cpu      time.Duration // CPU time of the server process during the run
	mallocs  uint64        // heap allocations of the server during the run
	loadavg  string
	fromTool string // the tool's summary line, for the record
}

func (r result) cpuPerReq() float64 {
	return float64(r.cpu) / float64(time.Microsecond) / float64(r.reqs)
}

func (r result) allocsPerReq() float64 { return float64(r.mallocs) / float64(r.reqs) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	for _, p := range c.protos {
		tool := map[string]string{"h1": "wrk", "h2c": "h2load"}[p]
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is needed for %s: install it (apt-get install -y wrk nghttp2-client)", tool, p)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if c.logDir == "" {
		if c.logDir, err = os.MkdirTemp("", "steady-"); err != nil {
			return err
		}
		defer os.RemoveAll(c.logDir)
	}

	var targets []*target
	defer func() {
		for _, t := range targets {
			t.stop()
		}
	}()
	for _, kind := range []string{"plain", "upgrade"} {
		t, err := startHelper(ctx, self, kind, c.logDir)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	refs := []struct{ name, bin string }{{"reference", c.server}}
	if c.compare != "" {
		refs = append(refs, struct{ name, bin string }{"compare", c.compare})
	}
	for _, r := range refs {
		t, err := startReference(ctx, r.name, r.bin, c.logDir)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	for _, t := range targets {
		if err := t.waitUp(ctx); err != nil {
			return err
		}
		if t.readCost, err = t.mallocsReadCost(ctx); err != nil {
			return err
		}
	}

	fmt.Fprintf(stdout, "steady: GET /healthz, %d rounds of %v per server and protocol, %d connections", c.rounds, c.duration, c.conns)
	if slices.Contains(c.protos, "h2c") {
		fmt.Fprintf(stdout, ", %d streams each on h2c", c.streams)
	}
	fmt.Fprintf(stdout, "\nload average at start: %s\n", loadAvg())
	// A short warm-up of every server and protocol, not counted.
	for _, p := range c.protos {
		for _, t := range targets {
			if _, err := loadRun(ctx, p, t.addr, c.conns, c.streams, time.Second); err != nil {
				return fmt.Errorf("warm-up of %s over %s: %w", t.name, p, err)
			}
		}
	}

	fmt.Fprintf(stdout, "\n%-5s %-5s %-9s %10s %8s %10s %10s %7s  %s\n",
		"round", "proto", "server", "req/s", "errors", "cpu µs/req", "allocs/req", "×plain", "load average")
	var results []result
	for round := 1; round <= c.rounds; round++ {
		for _, p := range c.protos {
			// Rotate the order so that no server always runs first or last.
			order := slices.Clone(targets)
			k := (round - 1) % len(order)
			order = append(order[k:], order[:k]...)
			var plainRPS float64
			var rr []result
			for _, t := range order {
				r, err := measure(ctx, t, p, c)
				if err != nil {
					return err
				}
				r.round = round
				rr = append(rr, r)
				if t.name == "plain" {
					plainRPS = r.rps
				}
			}
			for _, r := range rr {
				fmt.Fprintf(stdout, "%-5d %-5s %-9s %10.0f %8d %10.2f %10.2f %7.3f  %s\n",
					r.round, r.proto, r.target, r.rps, r.errors, r.cpuPerReq(), r.allocsPerReq(), r.rps/plainRPS, r.loadavg)
			}
			results = append(results, rr...)
		}
	}
	summarize(stdout, c, targets, results)
	fmt.Fprintf(stdout, "load average at end: %s\n", loadAvg())
	for _, t := range targets {
		select {
		case <-t.exited:
			return fmt.Errorf("%s exited during the run; its log: %s", t.name, filepath.Join(c.logDir, t.name+".log"))
		default:
		}
	}
	return nil
}

// measure loads t with one protocol for the configured duration and reads
// what the server spent meanwhile.
func measure(ctx context.Context, t *target, proto string, c *config) (result, error) {
	pid := t.cmd.Process.Pid
	m0, err := t.mallocs(ctx)
	if err != nil {
		return result{}, fmt.Errorf("%s: read allocations: %w", t.name, err)
	}
	cpu0, err := cpuTime(pid)
	if err != nil {
		return result{}, err
	}
	la := loadAvg()
	lr, err := loadRun(ctx, proto, t.addr, c.conns, c.streams, c.duration)
	if err != nil {
		return result{}, fmt.Errorf("%s over %s: %w", t.name, proto, err)
	}
	cpu1, err := cpuTime(pid)
	if err != nil {
		return result{}, err
	}
	m1, err := t.mallocs(ctx)
	if err != nil {
		return result{}, fmt.Errorf("%s: read allocations: %w", t.name, err)
	}
	if lr.reqs == 0 {
		return result{}, fmt.Errorf("%s over %s: no request succeeded: %s", t.name, proto, lr.summary)
	}
	return result{
		proto: proto, target: t.name, reqs: lr.reqs, rps: lr.rps, errors: lr.errors,
		cpu: cpu1 - cpu0, mallocs: m1 - m0 - min(t.readCost, m1-m0), loadavg: la, fromTool: lr.summary,
	}, nil
}

// summarize prints, per protocol and server, the medians over the rounds,
// and the ratios against plain computed within each round.
func summarize(w io.Writer, c *config, targets []*target, results []result) {
	fmt.Fprintf(w, "\nmedians over %d rounds (ratios: per round against plain, then the median)\n", c.rounds)
	fmt.Fprintf(w, "%-5s %-9s %10s %10s %10s %12s %14s\n",
		"proto", "server", "req/s", "×plain", "cpu µs/req", "cpu ×plain", "allocs/req")
	for _, p := range c.protos {
		byRound := map[int]map[string]result{}
		for _, r := range results {
			if r.proto != p {
				continue
			}
			if byRound[r.round] == nil {
				byRound[r.round] = map[string]result{}
			}
			byRound[r.round][r.target] = r
		}
		for _, t := range targets {
			var rps, ratio, cpu, cpuRatio, allocs []float64
			for _, m := range byRound {
				r, base := m[t.name], m["plain"]
				rps = append(rps, r.rps)
				ratio = append(ratio, r.rps/base.rps)
				cpu = append(cpu, r.cpuPerReq())
				cpuRatio = append(cpuRatio, r.cpuPerReq()/base.cpuPerReq())
				allocs = append(allocs, r.allocsPerReq())
			}
			fmt.Fprintf(w, "%-5s %-9s %10.0f %10.3f %10.2f %12.3f %14.2f\n",
				p, t.name, median(rps), median(ratio), median(cpu), median(cpuRatio), median(allocs))
		}
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// startHelper starts this binary as a plain or upgrade server.
func startHelper(ctx context.Context, self, kind, logDir string) (*target, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	stats, err := freeAddr()
	if err != nil {
		return nil, err
	}
	t := &target{name: kind, addr: addr}
	if err := t.start(self, []string{"serve", "-kind", kind, "-addr", addr, "-stats", stats}, nil, logDir); err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	t.mallocs = func(ctx context.Context) (uint64, error) {
		b, err := get(ctx, client, "http://"+stats+"/mallocs", "")
		if err != nil {
			return 0, err
		}
		return strconv.ParseUint(string(b), 10, 64)
	}
	return t, nil
}

// startReference starts the reference server with a data directory of its
// own; its allocations come from /metrics on its control socket.
func startReference(ctx context.Context, name, bin, logDir string) (*target, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(logDir, name+"-data")
	t := &target{name: name, addr: addr}
	if err := t.start(bin, []string{"-addr", addr, "-data-dir", dataDir, "-log-format", "json"}, []string{"HANDOFF_"}, logDir); err != nil {
		return nil, err
	}
	sock := filepath.Join(dataDir, "control.sock")
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	t.mallocs = func(ctx context.Context) (uint64, error) {
		tok, err := os.ReadFile(filepath.Join(dataDir, "control.token"))
		if err != nil {
			return 0, err
		}
		b, err := get(ctx, client, "http://control/metrics", string(bytes.TrimSpace(tok)))
		if err != nil {
			return 0, err
		}
		return promValue(b, "go_memstats_mallocs_total")
	}
	return t, nil
}

// start runs bin with args, its output going to logDir/NAME.log. Variables
// whose names start with one of dropEnv are left out of its environment.
func (t *target) start(bin string, args, dropEnv []string, logDir string) error {
	logf, err := os.Create(filepath.Join(logDir, t.name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	for _, kv := range os.Environ() {
		if !slices.ContainsFunc(dropEnv, func(p string) bool { return strings.HasPrefix(kv, p) }) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", t.name, err)
	}
	t.cmd = cmd
	t.exited = make(chan struct{})
	go func() { // ends when the server exits
		cmd.Wait()
		logf.Close()
		close(t.exited)
	}()
	return nil
}

// waitUp polls GET /healthz until it answers 200, for at most a minute.
func (t *target) waitUp(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(time.Minute)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-t.exited:
			return fmt.Errorf("%s exited before it answered: %v", t.name, t.cmd.ProcessState)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if _, last = get(ctx, client, "http://"+t.addr+"/healthz", ""); last == nil {
			_, last = t.mallocs(ctx)
			if last == nil {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer within a minute: %v", t.name, last)
}

// stop sends SIGTERM to the server it started and waits for it, then
// SIGKILL after 10s.
func (t *target) stop() {
	if t.cmd == nil {
		return
	}
	t.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-t.exited:
	case <-time.After(10 * time.Second):
		t.cmd.Process.Kill()
		<-t.exited
	}
}

func get(ctx context.Context, c *http.Client, url, token string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, nil
}

// promValue finds the value of an unlabelled metric in the Prometheus
// text format.
func promValue(b []byte, name string) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			return uint64(v), err
		}
	}
	return 0, fmt.Errorf("no %s in /metrics", name)
}

// freeAddr returns a loopback address with a port free at the moment.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// cpuTime is the CPU time all threads of pid have run, from the
// scheduler's per-thread statistics (nanoseconds, unlike the ticks of
// /proc/PID/stat).
func cpuTime(pid int) (time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("cpu time of pid %d: %w", pid, err)
	}
	var total int64
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "schedstat"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			total += n
		}
	}
	return time.Duration(total), nil
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
