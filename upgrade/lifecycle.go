package upgrade

import (
	"context"
	"os"
	"sync"
	"syscall"
	"time"
)

// lifecycle is the state of a generation. One goroutine owns it (loop):
// signals, API calls, the upgrade attempt and the messages of the process
// that started this generation all reach it as functions run on that
// goroutine (do), as tableflip's run loop does with its channels. Status
// reads the snapshot it publishes.
type lifecycle struct {
	state State
	// committed: this generation has taken over (Ready succeeded).
	committed bool
	// awaitingCommit: its ready report is out and the answer decides what
	// a stop means, so a stop waits for it.
	awaitingCommit bool
	stopping       bool // a stop began, or was decided
	finishing      bool // the drain began (stop or handoff)
	handedOver     bool
	stops          int // stop signals received
	deferredStop   *stopRequest
	deferredUpHup  bool // an upgrade request to pass on once the handoff resolves

	// The upgrade queue, in chain mode.
	pending     bool
	pendingSrc  string
	again       bool // asked for while one ran: run another after it
	waiters     []chan upgradeOutcome
	attempt     *attempt
	committing  bool // the running attempt told its child to take over
	successor   *successor
	loggedWait  string
	waitStarted time.Time

	// Upgrade requests sent to the supervisor, by ID.
	supWaiters map[uint64]chan upgradeOutcome
	nextID     uint64

	upgrades    UpgradeCounts
	lastUpgrade *UpgradeRecord
	lastDrain   *DrainRecord
	supervisor  *SupervisorInfo
	// upIn delivers the messages of the process that started this
	// generation once it has taken over (before that, Ready reads them).
	upIn <-chan inbound
}

type stopRequest struct {
	reason   string
	deadline time.Time
}

type upgradeOutcome struct {
	res Result
	err error
}

// loop is the lifecycle goroutine. It ends when the generation has
// finished.
func (u *Upgrader) loop() {
	defer u.wg.Done()
	defer close(u.loopDone)
	for {
		select {
		case sig := <-u.sigC:
			u.onSignal(sig)
		case <-u.pipeC:
			// A write to a pipe whose reader is gone failed with EPIPE;
			// the writer handles it.
		case f := <-u.events:
			f()
		case in, ok := <-u.lc.upIn:
			if !ok {
				u.lc.upIn = nil
				continue
			}
			u.onUpstream(in)
		case <-u.finished:
			return
		}
	}
}

// do runs f on the lifecycle goroutine and returns once it has run. It
// returns false, without running f, if the generation has finished.
func (u *Upgrader) do(f func()) bool {
	done := make(chan struct{})
	select {
	case u.events <- func() { f(); close(done) }:
		<-done
		return true
	case <-u.loopDone:
		return false
	}
}

// publish stores the snapshot Status reads. Lifecycle goroutine only (or
// New, before it starts).
func (u *Upgrader) publish() {
	lc := &u.lc
	st := &Status{
		PID:            u.pid,
		ParentPID:      u.parentPID,
		Generation:     u.gen,
		Version:        u.opts.Version,
		Mode:           u.mode,
		State:          lc.state,
		StartedAt:      u.started,
		UpgradePending: lc.pending || lc.again,
		Upgrades:       lc.upgrades,
	}
	if lc.lastUpgrade != nil {
		r := *lc.lastUpgrade
		st.LastUpgrade = &r
	}
	if lc.lastDrain != nil {
		d := *lc.lastDrain
		st.LastDrain = &d
	}
	if lc.supervisor != nil {
		s := *lc.supervisor
		st.Supervisor = &s
	}
	u.snap.Store(st)
}

func (u *Upgrader) setState(s State) {
	u.lc.state = s
	u.publish()
}

// onSignal: SIGHUP upgrades; SIGTERM and SIGINT stop, and a second one
// forces. After a handoff a signal is passed on to the generation that
// took over, as a message (so a signal that reaches both, as systemd's
// KillMode=control-group sends it, is not counted twice there): a stop
// signal is meant for the service, whichever of its processes it reached.
func (u *Upgrader) onSignal(sig os.Signal) {
	if sig == syscall.SIGHUP {
		if err := u.request("signal", nil); err != nil {
			u.log.Warn().Err(err).Msg("upgrade request ignored")
		}
		return
	}
	u.lc.stops++
	if u.lc.stops > 1 {
		u.log.Warn().Str("signal", sig.String()).Msg("second stop signal: exiting now without waiting for the drain")
		u.runErr = ErrForced
		close(u.forcedC)
		return
	}
	if u.lc.handedOver {
		u.passOn(msgStop, "stop signal "+sig.String())
		return
	}
	u.stop("signal "+sig.String(), time.Time{})
}

// passOn sends a stop or an upgrade request on to whoever serves after
// this generation handed over: the new generation, or the supervisor.
func (u *Upgrader) passOn(typ, what string) {
	l, to := u.up.linkOrNil(), "supervisor"
	if u.lc.successor != nil {
		l, to = u.lc.successor.link, "new generation"
	}
	if l == nil {
		u.log.Warn().Str("request", what).Msg("after handoff: nobody to pass the request on to")
		return
	}
	u.log.Info().Str("request", what).Str("to", to).Msg("after handoff: passed on")
	if err := l.send(message{Type: typ, Source: "forwarded"}, time.Second); err != nil {
		u.log.Warn().Err(err).Str("to", to).Msg("pass on request")
	}
}

// request asks for an upgrade. In chain mode a request that comes while
// one runs is run after it (a signal) or refused (a caller waiting for a
// result, who would otherwise get the result of an upgrade it did not ask
// for); requests that come while one waits collapse into it. A supervised
// generation passes it to the supervisor, which queues the same way.
func (u *Upgrader) request(source string, waiter chan upgradeOutcome) error {
	lc := &u.lc
	switch {
	case u.mode == modeStandalone:
		return ErrStandalone
	case u.mode == modeChain && u.pid1:
		return ErrHotRestartDisabled
	case lc.handedOver && waiter == nil:
		u.passOn(msgUpgrade, "upgrade ("+source+")")
		return nil
	case lc.stopping || lc.finishing:
		return ErrStopping
	case lc.committing && waiter == nil:
		lc.deferredUpHup = true
		return nil
	}
	if u.mode == modeSupervised {
		lc.nextID++
		id := lc.nextID
		if err := u.up.send(message{Type: msgUpgrade, ID: id, Source: source}); err != nil {
			return err
		}
		if waiter != nil {
			if lc.supWaiters == nil {
				lc.supWaiters = map[uint64]chan upgradeOutcome{}
			}
			lc.supWaiters[id] = waiter
		}
		u.log.Info().Str("source", source).Msg("upgrade requested from the supervisor")
		return nil
	}
	if lc.attempt != nil {
		if waiter != nil {
			return ErrUpgradeInProgress
		}
		if !lc.again {
			u.log.Info().Str("source", source).Msg("upgrade queued: another upgrade is in progress")
		}
		lc.again = true
		u.publish()
		return nil
	}
	if waiter != nil {
		lc.waiters = append(lc.waiters, waiter)
	}
	if lc.pending {
		return nil // collapses into the one already waiting
	}
	lc.pending, lc.pendingSrc = true, source
	u.log.Info().Str("source", source).Msg("upgrade requested")
	u.publish()
	u.maybeStartUpgrade()
	return nil
}

// maybeStartUpgrade starts the pending upgrade once it may run: this
// generation serves, and the one before it has exited (tableflip refuses
// to upgrade while its parent is still draining; its drain deadline
// bounds the wait).
func (u *Upgrader) maybeStartUpgrade() {
	lc := &u.lc
	if !lc.pending || lc.attempt != nil || lc.stopping || lc.finishing {
		return
	}
	if !lc.committed {
		u.logWait("ready", func() { u.log.Info().Msg("upgrade waits until this generation is ready") })
		return
	}
	select {
	case <-u.prevGone:
	default:
		u.logWait("parent", func() {
			u.log.Info().Int("parent_pid", u.parentPID).Msg("upgrade waits for the previous generation to finish draining")
		})
		return
	}
	if lc.loggedWait == "parent" {
		u.log.Info().Float64("waited_ms", ms(time.Since(lc.waitStarted))).Msg("previous generation exited: running queued upgrade")
	}
	lc.loggedWait = ""
	a := &attempt{
		source:   lc.pendingSrc,
		waiters:  lc.waiters,
		upgrades: lc.upgrades,
		abort:    make(chan struct{}),
		done:     make(chan struct{}),
	}
	lc.pending, lc.waiters, lc.attempt = false, nil, a
	u.setState(StateUpgrading)
	u.wg.Add(1)
	go func() { // ends when the attempt has succeeded or failed
		defer u.wg.Done()
		defer close(a.done)
		succ, rec, err := u.attemptChain(a)
		if !u.do(func() { u.attemptDone(a, succ, rec, err) }) && succ != nil {
			succ.link.close()
		}
	}()
}

func (u *Upgrader) logWait(what string, log func()) {
	if u.lc.loggedWait != what {
		u.lc.loggedWait = what
		u.lc.waitStarted = time.Now()
		log()
	}
}

// attemptDone records how an upgrade ended and acts on it.
func (u *Upgrader) attemptDone(a *attempt, succ *successor, rec UpgradeRecord, err error) {
	lc := &u.lc
	lc.attempt, lc.committing = nil, false
	lc.lastUpgrade = &rec
	again := lc.again
	lc.again = false
	if err == nil {
		lc.upgrades.Succeeded++
		lc.successor = succ
	} else {
		lc.upgrades.Failed++
		if lc.state == StateUpgrading {
			lc.state = StateServing
		}
	}
	u.publish()
	for _, w := range a.waiters {
		w <- upgradeOutcome{res: resultOf(succ), err: err}
	}
	if err == nil {
		lc.handedOver = true
		if again || lc.deferredUpHup {
			// Asked for while this one ran, perhaps for a binary deployed
			// since: the new generation runs it once this one has exited.
			u.passOn(msgUpgrade, "queued upgrade")
		}
		if lc.deferredStop != nil {
			u.passOn(msgStop, lc.deferredStop.reason)
		}
		u.beginFinish(true, "handoff", time.Time{})
		return
	}
	lc.deferredUpHup = false
	if r := lc.deferredStop; r != nil {
		lc.deferredStop = nil
		u.stop(r.reason, r.deadline)
		return
	}
	if again {
		lc.pending, lc.pendingSrc = true, "queued"
		u.maybeStartUpgrade()
	}
}

func resultOf(s *successor) Result {
	if s == nil {
		return Result{}
	}
	return s.Result
}

// askCommit is asked by the attempt when the new generation is ready: it
// may take over unless this generation is stopping. From a yes on, a stop
// waits for the attempt's end.
func (u *Upgrader) askCommit() bool {
	ok := false
	u.do(func() {
		if !u.lc.stopping && !u.lc.finishing {
			u.lc.committing = true
			ok = true
		}
	})
	return ok
}

// stop stops the generation gracefully, once. A stop that comes while the
// outcome of a handoff is being decided waits for it: if the handoff
// happens, the stop is passed on to the new generation.
func (u *Upgrader) stop(reason string, deadline time.Time) {
	lc := &u.lc
	if lc.finishing || lc.stopping {
		u.log.Info().Str("reason", reason).Msg("stop requested: already stopping or draining")
		return
	}
	if lc.awaitingCommit || lc.committing {
		if lc.deferredStop == nil {
			lc.deferredStop = &stopRequest{reason, deadline}
			u.log.Info().Str("reason", reason).Msg("stop requested during the handoff: it follows the handoff's outcome")
		}
		return
	}
	lc.stopping = true
	if a := lc.attempt; a != nil {
		a.abortOnce.Do(func() { close(a.abort) })
	}
	if u.up != nil {
		switch {
		case !lc.committed:
			// The process that started this one learns why it failed.
			u.up.send(message{Type: msgFailed, Reason: "stopped before it was ready: " + reason})
		case u.mode == modeSupervised:
			u.up.send(message{Type: msgStopping, Reason: reason})
		}
	}
	u.beginFinish(false, reason, deadline)
}

// fail stops the generation because it cannot go on; Run returns err.
func (u *Upgrader) fail(err error) {
	u.do(func() {
		if u.runErr == nil {
			u.runErr = err
		}
		u.stop("error: "+err.Error(), time.Time{})
	})
}

// beginFinish starts the end of this generation: the drain after a
// handoff, or a stop.
func (u *Upgrader) beginFinish(handoff bool, reason string, deadline time.Time) {
	lc := &u.lc
	lc.finishing = true
	lc.pending = false
	for _, w := range lc.waiters {
		w <- upgradeOutcome{err: ErrStopping}
	}
	lc.waiters = nil
	if !handoff {
		u.failSupWaiters()
	}
	// After a handoff, an upgrade request this generation passed to the
	// supervisor (the one that replaced it, most likely) is answered while
	// it drains: its caller's request is one the drain waits for.
	if handoff {
		u.handedOff.Store(true)
		u.setState(StateDraining)
	} else {
		u.setState(StateStopping)
	}
	close(u.stopC)
	var attemptDone <-chan struct{}
	if lc.attempt != nil {
		attemptDone = lc.attempt.done
	}
	go u.finish(handoff, reason, deadline, attemptDone, lc.committed) // closes u.finished when done
}

// failSupWaiters answers the upgrade requests still waiting for the
// supervisor: this generation can no longer tell their outcome.
func (u *Upgrader) failSupWaiters() {
	for id, w := range u.lc.supWaiters {
		w <- upgradeOutcome{err: ErrStopping}
		delete(u.lc.supWaiters, id)
	}
}

// onUpstream handles a message of the process that started this
// generation, once this generation has taken over.
func (u *Upgrader) onUpstream(in inbound) {
	defer closeFiles(in.files)
	lc := &u.lc
	if in.err != nil {
		lc.upIn = nil
		u.failSupWaiters()
		if u.mode == modeSupervised && !lc.finishing {
			u.log.Error().Err(in.err).Msg("the supervisor is gone: stopping")
			u.stop("supervisor gone", time.Time{})
		}
		return
	}
	m := in.msg
	switch m.Type {
	case msgStop:
		u.stop("stop requested by the "+u.up.kind, time.Time{})
	case msgUpgrade:
		if err := u.request("forwarded", nil); err != nil {
			u.log.Warn().Err(err).Msg("upgrade request ignored")
		}
	case msgDrain:
		if !lc.finishing {
			lc.handedOver = true
			lc.stopping = true
			u.beginFinish(true, "handoff", time.Time{})
		}
	case msgUpgradeResult:
		if w := lc.supWaiters[m.ID]; w != nil {
			delete(lc.supWaiters, m.ID)
			o := upgradeOutcome{}
			if m.Result != nil {
				o.res = *m.Result
			}
			if m.Failure != nil {
				o.err = m.Failure.err()
			}
			w <- o
		}
	case msgDrained:
		if m.Drain != nil {
			lc.lastDrain = m.Drain
			u.publish()
			u.log.Info().Int("previous_pid", m.Drain.PID).Int64("force_closed", m.Drain.Closed.Forced).
				Float64("drain_ms", ms(time.Duration(m.Drain.Duration))).Msg("previous generation drained")
		}
	case msgSupervisor:
		// The supervisor replaced its code: what it had not handled yet
		// may be lost, so ask again.
		lc.supervisor = m.Supervisor
		u.publish()
		for id := range lc.supWaiters {
			u.up.send(message{Type: msgUpgrade, ID: id, Source: "api"})
		}
		if lc.stopping && lc.committed {
			u.up.send(message{Type: msgStopping, Reason: "stopping"})
		}
	case msgStateRequest:
		u.wg.Add(1)
		go func() { // ends once the state is sent
			defer u.wg.Done()
			u.handOverState(u.up.link)
		}()
	}
}

// finish is the end of a generation: the shutdown delay for a stop, then
// the drain, the cleanup hooks, and the PID file.
func (u *Upgrader) finish(handoff bool, reason string, deadline time.Time, attemptDone <-chan struct{}, committed bool) {
	defer close(u.finished)
	if !handoff {
		u.log.Info().Str("reason", reason).Float64("shutdown_delay_ms", ms(u.opts.ShutdownDelay)).Msg("stopping")
		if committed {
			// Only the main process is heard; one that never took over
			// is not it.
			u.notify.stopping()
		}
		if u.opts.ShutdownDelay > 0 {
			time.Sleep(u.opts.ShutdownDelay)
		}
		if attemptDone != nil {
			// The new generation was told to leave; it drains what it
			// served in probation and exits.
			select {
			case <-attemptDone:
			case <-time.After(u.opts.DrainTimeout):
			}
		}
		if u.tf != nil && committed {
			// Closes the copies kept for a successor and removes unix
			// socket files: there will be no successor. A generation that
			// never took over leaves them to the one that serves.
			u.tf.Stop()
		}
	}
	u.do(func() { u.setState(StateDraining) })

	dl := time.Now().Add(u.opts.DrainTimeout)
	if !deadline.IsZero() && deadline.Before(dl) {
		dl = deadline
	}
	ctx, cancel := context.WithDeadline(context.Background(), dl)
	stopExtend := func() {}
	if !handoff && committed {
		// After a handoff this process is no longer systemd's main
		// process, and the stop timeout is not its concern.
		stopExtend = u.notify.extendDuring(time.Until(dl))
	}
	kind := "stop"
	if handoff {
		kind = "handoff"
	}
	rec := u.drainAll(ctx, kind)
	cancel()
	stopExtend()
	var succ *successor
	u.do(func() {
		u.lc.lastDrain = &rec
		succ = u.lc.successor
		u.publish()
	})
	switch {
	case succ != nil:
		succ.link.send(message{Type: msgDrained, Drain: &rec}, time.Second)
	case u.mode == modeSupervised:
		u.up.send(message{Type: msgDrained, Drain: &rec})
	}

	u.do(u.failSupWaiters)
	u.runCleanups()
	if !handoff && committed && u.opts.PIDFile != "" {
		removePIDFile(u.opts.PIDFile, u.pid)
	}
	if succ != nil {
		succ.link.close()
		// Copy the last of the child's start-up output to stderr. It ends
		// when the child lets go of the pipe (it did when it became
		// ready); bounded, since exiting matters more than that output.
		select {
		case <-succ.teeDone:
		case <-time.After(2 * time.Second):
			u.log.Warn().Int("new_pid", succ.PID).Msg("new generation still holds its start-up stderr pipe; not waiting for it")
		}
	}
	if u.up != nil {
		u.up.link.close()
	}
	u.do(func() { u.setState(StateStopped) })
	u.log.Info().Str("reason", reason).Float64("uptime_ms", ms(time.Since(u.started))).Msg("exit")
}

// attempt is one upgrade in chain mode.
type attempt struct {
	source    string
	waiters   []chan upgradeOutcome
	upgrades  UpgradeCounts
	abort     chan struct{} // closed when this generation stops first
	abortOnce sync.Once
	done      chan struct{} // closed when the attempt has ended
}
