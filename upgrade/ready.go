package upgrade

import (
	"context"
	"errors"
	"fmt"
	"github.com/handoff-go/handoff/internal/atomicfile"
	"time"
)

// Ready reports that start-up succeeded, and is the commit point of an
// upgrade. With Options.Probation a new generation first serves beside the
// old one for that long. It then writes the PID file (beside its final
// name) and tells the process that started it that it is ready; only when
// that one answers "take over" does it become the serving generation:
// the old generation then stops accepting and drains, and nothing after
// that point makes this one exit on its own.
//
// If the generation stops first (a signal, a failed step, the old
// generation calling the upgrade off), Ready returns an error once this
// generation has drained what it served and run its cleanup hooks: return
// it, and exit with a non-zero status.
func (u *Upgrader) Ready() error {
	u.readyOnce.Do(func() { u.readyErr = u.ready() })
	return u.readyErr
}

func (u *Upgrader) ready() error {
	u.regMu.Lock()
	u.regClosed = true
	u.regMu.Unlock()
	for name, f := range u.activated {
		u.log.Warn().Str("name", name).Msg("socket activation: systemd passed a socket nobody asked for; closing it")
		f.Close()
		delete(u.activated, name)
	}
	if u.HasParent() && u.opts.Probation > 0 {
		u.log.Info().Float64("window_ms", ms(u.opts.Probation)).Msg("probation started")
		t := time.NewTimer(u.opts.Probation)
		select {
		case <-t.C:
		case <-u.stopC:
			t.Stop()
			return u.stoppedBeforeReady(ErrStopping)
		case <-u.forcedC:
			return ErrForced
		}
		u.log.Info().Msg("probation passed")
	}
	var pidf *atomicfile.Pending
	if u.opts.PIDFile != "" {
		var err error
		if pidf, err = preparePIDFile(u.opts.PIDFile, u.pid); err != nil {
			u.fail(err)
			return u.stoppedBeforeReady(err)
		}
	}
	alone := false
	if u.up != nil {
		var err error
		if alone, err = u.awaitCommit(); err != nil {
			pidf.Discard()
			return u.stoppedBeforeReady(err)
		}
	}

	// Committed: from here on nothing makes this generation exit on its own.
	u.do(func() {
		lc := &u.lc
		lc.awaitingCommit, lc.committed = false, true
		if lc.state == StateStarting {
			lc.state = StateServing
		}
		if u.HasParent() {
			h := u.up.hello
			lc.lastUpgrade = &UpgradeRecord{
				OK: true, Source: h.Source, StartedAt: h.RequestedAt,
				Duration: Duration(time.Since(h.RequestedAt)),
				NewPID:   u.pid, NewVersion: u.opts.Version, NewGeneration: u.gen,
			}
			lc.upgrades.Succeeded++
		}
		if u.up != nil && !alone {
			lc.upIn = u.up.link.in
		}
		for _, sv := range u.registered() {
			if sv.control {
				u.startServer(sv)
			}
		}
		u.publish()
		if r := lc.deferredStop; r != nil {
			lc.deferredStop = nil
			u.stop(r.reason, r.deadline)
		}
		u.maybeStartUpgrade()
	})
	if u.mode == modeSupervised {
		// The supervisor closes its copies of what this generation did
		// not ask for; close ours.
		u.up.closeUntaken()
	}
	if u.tf != nil {
		// Tells tableflip's parent that the upgrade succeeded, and closes
		// inherited sockets nobody asked for. If the parent died, there
		// is nobody to tell.
		if err := u.tf.Ready(); err != nil && !alone {
			u.log.Warn().Err(err).Msg("report ready to tableflip")
		}
	}
	if err := pidf.Commit(); err != nil {
		// Past the commit point: the service goes on, a person must look.
		u.log.Error().Err(err).Msg("pid file not updated")
	}
	switch {
	case u.up == nil:
		u.notify.ready()
	case alone:
		// The generation that systemd knew as main died; name this one.
		u.notify = newNotifier(u.log)
		u.notify.mainPID(u.pid)
	}
	close(u.readyC)
	u.log.Info().Float64("startup_ms", ms(time.Since(u.started))).Msg("ready")
	return nil
}

// awaitCommit sends the ready report and waits for the answer. alone is
// true when the previous generation died before it answered: this one then
// serves on its own, since whichever process still holds the sockets must
// keep serving.
func (u *Upgrader) awaitCommit() (alone bool, err error) {
	stopping := false
	u.do(func() {
		stopping = u.lc.stopping || u.lc.finishing
		if !stopping {
			u.lc.awaitingCommit = true
		}
	})
	if stopping {
		return false, ErrStopping
	}
	// From here, a failure is reported over the link, not through the
	// pipe: put the service's stderr back.
	u.up.restoreStderr()
	u.regMu.Lock()
	rep := report{
		PID: u.pid, Version: u.opts.Version, Generation: u.gen, Used: u.listenKeys,
		DrainTimeout: u.opts.DrainTimeout, ShutdownDelay: u.opts.ShutdownDelay,
	}
	u.regMu.Unlock()
	var m message
	if err = u.up.send(message{Type: msgReady, Ready: &rep}); err == nil {
		m, _, err = u.up.link.recvType(0, msgCommit, msgAbort)
	}
	switch {
	case err != nil && u.mode == modeChain:
		u.log.Warn().Err(err).Int("parent_pid", u.parentPID).
			Msg("the previous generation exited before the handoff: this generation serves alone")
		return true, nil
	case err != nil:
		u.fail(fmt.Errorf("the supervisor did not answer the ready report: %w", err))
		return false, err
	case m.Type == msgAbort:
		u.log.Warn().Str("reason", m.Reason).Msg("upgrade called off by the " + u.up.kind)
		u.do(func() {
			u.lc.awaitingCommit = false
			u.lc.deferredStop = nil
			u.stop("upgrade called off: "+m.Reason, time.Time{})
		})
		return false, fmt.Errorf("%w: %s", ErrAborted, m.Reason)
	}
	return false, nil
}

// stoppedBeforeReady waits for the stop that ended start-up to finish, and
// returns err (or the error the generation failed with).
func (u *Upgrader) stoppedBeforeReady(err error) error {
	select {
	case <-u.finished:
	case <-u.forcedC:
		return ErrForced
	}
	if u.runErr != nil && !errors.Is(err, ErrAborted) {
		return u.runErr
	}
	return err
}

// InheritedState returns the state the previous generation handed over
// (Options.HandOver of that generation), asked for over the handoff
// channel while both serve. The first generation gets nil. It must be
// called before Ready; if the previous generation died before it answered
// it returns nil, and an error only for a state the previous generation
// failed to produce. Reject a state you cannot use by failing start-up:
// the upgrade then fails and the old generation serves on.
func (u *Upgrader) InheritedState(ctx context.Context) ([]byte, error) {
	if !u.HasParent() {
		return nil, nil
	}
	select {
	case <-u.readyC:
		return nil, errors.New("upgrade: InheritedState must be called before Ready")
	default:
	}
	start := time.Now()
	if err := u.up.send(message{Type: msgStateRequest}); err != nil {
		u.log.Warn().Err(err).Msg("no state from the previous generation: it is gone")
		return nil, nil
	}
	var state []byte
	for {
		var in inbound
		var ok bool
		select {
		case in, ok = <-u.up.link.in:
		case <-ctx.Done():
			return nil, fmt.Errorf("state from the previous generation: %w", ctx.Err())
		}
		if !ok || in.err != nil {
			u.log.Warn().Msg("no state from the previous generation: it is gone")
			return nil, nil
		}
		closeFiles(in.files)
		m := in.msg
		switch m.Type {
		case msgState:
		case msgAbort:
			return nil, fmt.Errorf("%w: %s", ErrAborted, m.Reason)
		default:
			continue
		}
		if m.Reason != "" {
			return nil, fmt.Errorf("the previous generation could not hand over its state: %s", m.Reason)
		}
		if len(state)+len(m.Data) > maxState {
			return nil, fmt.Errorf("state from the previous generation is over %d bytes", maxState)
		}
		state = append(state, m.Data...)
		if !m.More {
			u.log.Info().Int("bytes", len(state)).Float64("duration_ms", ms(time.Since(start))).Msg("state received from the previous generation")
			return state, nil
		}
	}
}

// handOverState answers a successor's state request on l.
func (u *Upgrader) handOverState(l *link) {
	start := time.Now()
	var data []byte
	var err error
	if u.opts.HandOver != nil {
		ctx, cancel := context.WithTimeout(context.Background(), DefaultHandOverTimeout)
		data, err = u.opts.HandOver(ctx)
		cancel()
		if err == nil && len(data) > maxState {
			err = fmt.Errorf("state of %d bytes is over the limit of %d", len(data), maxState)
		}
	}
	if serr := l.sendState(data, err); serr != nil {
		u.log.Warn().Err(serr).Msg("hand over state")
		return
	}
	if err != nil {
		u.log.Warn().Err(err).Msg("hand over state")
		return
	}
	u.log.Info().Int("bytes", len(data)).Float64("duration_ms", ms(time.Since(start))).Msg("state handed over")
}
