package restarttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Run checks the server as Check does and fails the test, with the
// summary, when a request or a restart failed, too few generations
// answered, or the check could not run. It logs the summary otherwise.
func Run(t testing.TB, c Config) *Report {
	t.Helper()
	if c.Logf == nil {
		c.Logf = t.Logf
	}
	rep, err := Check(t.Context(), c)
	switch {
	case err != nil:
		if rep != nil {
			t.Log(rep.Summary())
		}
		t.Fatalf("restarttest: %v", err)
	case !rep.OK():
		t.Errorf("restarttest: %s\n%s", rep.verdict(), rep.Summary())
	default:
		t.Logf("restarttest:\n%s", rep.Summary())
	}
	return rep
}

// Check starts the server (unless the Config names none), waits for its
// first answer, sends load while it restarts the server Restarts times,
// stops the load and every server process, and reports every request.
// Failed requests and restarts are in the report, not the error: the error
// says the check itself could not run (a bad Config, a server that never
// answered, a context cancelled, a process that would not die), and comes
// with the report so far when there is one. Nothing the kit started is
// left running when Check returns.
func Check(ctx context.Context, c Config) (rep *Report, err error) {
	s, err := validate(c)
	if err != nil {
		return nil, err
	}
	k := &kit{s: s, t0: time.Now(), firstExit: make(chan struct{})}
	k.rec = newRecorder(k.t0, s.GenHeader != "")
	rep = &Report{Title: s.Shell, URL: s.target.String(), Modes: s.Modes, Started: k.t0}
	if len(s.Command) > 0 {
		rep.Title = strings.Join(s.Command, " ")
	}
	rep.GenerationsBy = "processes holding the listening socket"
	if s.GenHeader != "" {
		rep.GenerationsBy = "header " + s.GenHeader
	}
	// Deferred, so that it runs also when a Restart func ends the
	// goroutine (t.Fatal).
	defer func() {
		if cerr := k.cleanup(); err == nil {
			err = cerr
		}
		k.finish(rep)
		if err != nil {
			rep.Err = err.Error()
		}
	}()
	return rep, k.check(ctx, rep)
}

// finish completes the report once everything has stopped.
func (k *kit) finish(rep *Report) {
	k.rec.fill(rep)
	if k.s.GenHeader == "" && k.procs != nil {
		for _, p := range k.procs.listened() {
			rep.GenLog = append(rep.GenLog, GenerationEvent{ID: "pid " + strconv.Itoa(p.PID), PID: p.PID, At: p.Listened})
		}
		rep.Generations = len(rep.GenLog)
	}
	rep.Elapsed = time.Since(k.t0)
}

// kit is one run of Check.
type kit struct {
	s     *settings
	t0    time.Time
	rec   *recorder
	procs *procTable // nil when the kit starts no server

	out      *os.File // where the server and restart commands write
	closeOut func()   // closes out and waits for its copier, if any

	first     *exec.Cmd
	firstExit chan struct{} // closed when the first process has exited
	firstErr  error

	clients  []*client
	stopLoad chan struct{}
	loadDone sync.WaitGroup
}

func (k *kit) logf(format string, args ...any) {
	if k.s.Logf != nil {
		k.s.Logf("%8.3fs "+format, append([]any{time.Since(k.t0).Seconds()}, args...)...)
	}
}

func (k *kit) check(ctx context.Context, rep *Report) error {
	s := k.s
	if err := k.openOutput(); err != nil {
		return err
	}
	if s.manage {
		if err := k.startServer(); err != nil {
			return err
		}
	}
	if err := k.waitReady(ctx); err != nil {
		return err
	}
	if err := k.startLoad(); err != nil {
		return err
	}
	rep.LoadStarted = time.Since(k.t0)
	k.logf("load started: %d clients (%s)", s.Clients, modeList(s.Modes))

	// The first restart comes an Interval after the load started, once
	// every client has had an answer (or RequestTimeout has passed).
	next := k.t0.Add(rep.LoadStarted + s.Interval)
	k.waitClients(ctx, rep.LoadStarted, next.Add(s.RequestTimeout))
	lastEnd := time.Since(k.t0)
	for i := 1; i <= s.Restarts; i++ {
		if err := sleepUntil(ctx, next); err != nil {
			return err
		}
		ev := k.restart(ctx, i)
		rep.RestartLog = append(rep.RestartLog, ev)
		rep.Restarts = i
		if ev.Err != "" {
			rep.RestartErrors = append(rep.RestartErrors, fmt.Sprintf("restart %d: %s", i, ev.Err))
			k.logf("restart %d failed: %s", i, ev.Err)
		} else {
			k.logf("restart %d done in %v", i, (ev.End - ev.Start).Round(time.Millisecond))
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		next = k.t0.Add(ev.End + s.Interval)
		lastEnd = ev.End
	}
	// The tail: the Duration, an Interval after the last restart, and an
	// answer to every client after it.
	end := k.t0.Add(max(rep.LoadStarted+s.Duration, lastEnd+s.Interval))
	if err := sleepUntil(ctx, end); err != nil {
		return err
	}
	k.waitClients(ctx, lastEnd, time.Now().Add(s.RequestTimeout))
	k.stopClients()
	rep.LoadEnded = time.Since(k.t0)
	k.logf("load stopped")
	return ctx.Err()
}

func modeList(ms []Mode) string {
	var s []string
	for _, m := range ms {
		s = append(s, string(m))
	}
	return strings.Join(s, ", ")
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// openOutput makes the file the server and restart commands write to.
// Children get an *os.File, so waiting for one never waits for a copier.
func (k *kit) openOutput() error {
	k.closeOut = func() {}
	switch w := k.s.Output.(type) {
	case nil:
		f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		k.out, k.closeOut = f, func() { f.Close() }
	case *os.File:
		k.out = w
	default:
		r, wf, err := os.Pipe()
		if err != nil {
			return err
		}
		done := make(chan struct{})
		go func() { // ends when every holder of the write end closed it
			defer close(done)
			io.Copy(w, r)
		}()
		k.out = wf
		k.closeOut = func() {
			wf.Close()
			select {
			case <-done:
			case <-time.After(time.Second): // a process the kit does not know holds it
			}
			r.Close()
		}
	}
	return nil
}

// env is the environment of the server and restart commands.
func (k *kit) env(extra ...string) []string {
	return append(append(os.Environ(), k.s.Env...), extra...)
}

func (k *kit) startServer() error {
	s := k.s
	var cmd *exec.Cmd
	if s.Shell != "" {
		cmd = exec.Command("/bin/sh", "-c", s.Shell)
	} else {
		cmd = exec.Command(s.Command[0], s.Command[1:]...)
	}
	cmd.Dir, cmd.Env = s.Dir, k.env()
	cmd.Stdout, cmd.Stderr = k.out, k.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	k.procs = newProcTable(k.t0, s.port)
	if err := cmd.Start(); err != nil {
		close(k.firstExit)
		return fmt.Errorf("start server: %w", err)
	}
	k.first = cmd
	go func() { // ends when the first process exits; cleanup makes sure it does
		k.firstErr = cmd.Wait()
		close(k.firstExit)
	}()
	k.procs.addGroup(cmd.Process.Pid, cmd.Process.Pid)
	k.procs.run()
	k.logf("server started: pid %d", cmd.Process.Pid)
	return nil
}

// waitReady polls the URL until it answers OK, the ReadyTimeout passes,
// or every server process has exited.
func (k *kit) waitReady(ctx context.Context) error {
	s := k.s
	deadline := time.Now().Add(s.ReadyTimeout)
	probe, err := s.newTransport(s.Modes[0], map[Mode]*h2conn{}, k.rec)
	if err != nil {
		return err
	}
	defer probe.close()
	k0 := kindGet
	if s.Modes[0] == GRPC {
		k0 = kindRPC
	}
	var last string
	for {
		a := probe.round(k0, nil)
		o, detail := judge(a, nil)
		if o == OK {
			k.logf("server answered")
			return nil
		}
		last = o.String() + ": " + detail
		if s.manage {
			k.procs.scan()
			if len(k.procs.alive()) == 0 {
				<-k.firstExit
				return fmt.Errorf("server exited before it answered %s (first process: %v); last try: %s", s.target, exitText(k.firstErr), last)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server did not answer %s within %v (ReadyTimeout); last try: %s", s.target, s.ReadyTimeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func (k *kit) startLoad() error {
	s := k.s
	shared := map[Mode]*h2conn{}
	slow := 0
	for i := range s.Clients {
		m := s.Modes[i%len(s.Modes)]
		tr, err := s.newTransport(m, shared, k.rec)
		if err != nil {
			for _, c := range k.clients {
				c.tr.close()
			}
			k.clients = nil
			return err
		}
		c := &client{id: i, mode: m, tr: tr, rng: rand.New(rand.NewPCG(uint64(i), uint64(k.t0.UnixNano())))}
		if s.SlowPath != "" && m != GRPC && slow < s.SlowClients {
			c.slow = true
			slow++
		}
		c.lastOK.Store(-1)
		k.clients = append(k.clients, c)
	}
	k.stopLoad = make(chan struct{})
	for _, c := range k.clients {
		k.loadDone.Add(1)
		go func() { // ends when stopLoad is closed, after its request in flight
			defer k.loadDone.Done()
			c.loop(s, k.rec, k.stopLoad)
		}()
	}
	return nil
}

// waitClients waits until every client has had an OK answer to a request
// it sent at since or later, or until deadline.
func (k *kit) waitClients(ctx context.Context, since time.Duration, deadline time.Time) {
	for time.Now().Before(deadline) && ctx.Err() == nil {
		all := true
		for _, c := range k.clients {
			if time.Duration(c.lastOK.Load()) < since {
				all = false
				break
			}
		}
		if all {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (k *kit) stopClients() {
	if k.stopLoad != nil {
		close(k.stopLoad)
		k.loadDone.Wait()
		k.stopLoad = nil
	}
}

// restart runs restart i and times it.
func (k *kit) restart(ctx context.Context, i int) RestartEvent {
	info := RestartInfo{Index: i}
	if k.procs != nil {
		k.procs.scan()
		info.ServerPID = k.first.Process.Pid
		info.ServerPGID = info.ServerPID
		info.PIDs = k.procs.serving()
		if n := len(info.PIDs); n > 0 {
			info.NewestPID = info.PIDs[n-1]
		}
	}
	gens := k.rec.generations()
	ev := RestartEvent{Index: i, Start: time.Since(k.t0)}
	var err error
	if k.s.RestartShell != "" {
		err = k.restartShell(ctx, info)
	} else {
		err = k.s.Restart(ctx, info)
	}
	if err == nil && k.s.WaitGeneration {
		err = k.waitGeneration(ctx, gens, info.NewestPID, k.t0.Add(ev.Start+k.s.RestartTimeout))
	}
	ev.End = time.Since(k.t0)
	if err != nil {
		ev.Err = err.Error()
	}
	return ev
}

// waitGeneration waits until the handoff is over: a generation not
// among the first seen has answered (when counted by the header), and the
// process old has exited (when the kit tracks the server's processes).
func (k *kit) waitGeneration(ctx context.Context, seen, old int, deadline time.Time) error {
	for {
		answered := k.s.GenHeader == "" || k.rec.generations() > seen
		exited := k.procs == nil || old == 0
		if !exited {
			k.procs.scan()
			exited = !k.procs.isAlive(old)
		}
		if answered && exited {
			return nil
		}
		if time.Now().After(deadline) {
			if !answered {
				return fmt.Errorf("no new generation answered within %v (RestartTimeout)", k.s.RestartTimeout)
			}
			return fmt.Errorf("old generation (pid %d) still running %v after the restart began (RestartTimeout)", old, k.s.RestartTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// restartShell runs the restart command in a process group of its own,
// which the kit tracks: a server it starts is stopped at the end.
func (k *kit) restartShell(ctx context.Context, info RestartInfo) error {
	pids := make([]string, len(info.PIDs))
	for i, p := range info.PIDs {
		pids[i] = strconv.Itoa(p)
	}
	cmd := exec.Command("/bin/sh", "-c", k.s.RestartShell)
	cmd.Dir = k.s.Dir
	cmd.Env = k.env(
		"SERVER_PID="+strconv.Itoa(info.ServerPID),
		"SERVER_PGID="+strconv.Itoa(info.ServerPGID),
		"SERVER_PIDS="+strings.Join(pids, " "),
		"SERVER_NEWEST_PID="+strconv.Itoa(info.NewestPID),
		"RESTART_INDEX="+strconv.Itoa(info.Index),
	)
	cmd.Stdout, cmd.Stderr = k.out, k.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start restart command: %w", err)
	}
	if k.procs != nil {
		k.procs.addGroup(cmd.Process.Pid, cmd.Process.Pid)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }() // ends when the command exits; killed below if it must
	timer := time.NewTimer(k.s.RestartTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("restart command: %w", err)
		}
		return nil
	case <-timer.C:
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("restart command still running after %v (RestartTimeout): killed", k.s.RestartTimeout)
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}

// cleanup stops the load and every server process, and closes the output.
func (k *kit) cleanup() error {
	k.stopClients()
	var err error
	if k.procs != nil {
		k.procs.stop()
		err = k.procs.stopAll(k.s.StopTimeout)
		if k.first != nil {
			select {
			case <-k.firstExit:
			case <-time.After(5 * time.Second):
				err = errors.Join(err, fmt.Errorf("first server process %d not reaped", k.first.Process.Pid))
			}
		}
		k.logf("server stopped")
	}
	k.closeOut()
	return err
}
