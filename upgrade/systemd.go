package upgrade

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"
)

// notifier speaks systemd's notify protocol for Type=notify-reload when
// NOTIFY_SOCKET is set, and does nothing otherwise (its methods accept a
// nil receiver).
//
// Under NotifyAccess=main only the main process is heard. The generation
// systemd started is the main process; when a new generation takes over,
// the old one sends MAINPID= for it together with READY=1, and from then on
// the new one is heard.
type notifier struct {
	log zerolog.Logger
}

func newNotifier(log zerolog.Logger) *notifier {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	return &notifier{log: log}
}

func (n *notifier) send(lines ...string) {
	if n == nil {
		return
	}
	msg := strings.Join(lines, "\n")
	if _, err := daemon.SdNotify(false, msg); err != nil {
		n.log.Warn().Err(err).Msg("systemd notify")
	}
}

func (n *notifier) ready() {
	n.send(daemon.SdNotifyReady, fmt.Sprintf("STATUS=serving, pid %d", os.Getpid()))
}

// reloading starts a reload: systemd waits for READY=1. MONOTONIC_USEC
// tells it which reload this is; without it a reload can hang.
func (n *notifier) reloading() {
	if n == nil {
		return
	}
	n.send(daemon.SdNotifyReloading, strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"),
		"STATUS=upgrading: starting new generation")
}

// handedOver makes the new generation the main process and ends the reload.
func (n *notifier) handedOver(pid int) {
	n.send(fmt.Sprintf("MAINPID=%d", pid), daemon.SdNotifyReady,
		fmt.Sprintf("STATUS=serving, pid %d (upgraded)", pid))
}

// mainPID names pid as the main process, for a generation whose
// predecessor, the main process, died before the handoff. It is heard
// only with NotifyAccess=all; supervised mode has no such gap.
func (n *notifier) mainPID(pid int) {
	n.send(fmt.Sprintf("MAINPID=%d", pid), daemon.SdNotifyReady,
		fmt.Sprintf("STATUS=serving, pid %d (its predecessor died before the handoff)", pid))
}

// reloadFailed ends the reload too, so that systemctl reload returns at
// once; the status line says why it failed.
func (n *notifier) reloadFailed(reason string) {
	n.send(daemon.SdNotifyReady, "STATUS=upgrade failed, old generation still serving: "+oneLine(reason))
}

func (n *notifier) stopping() {
	n.send(daemon.SdNotifyStopping, "STATUS=stopping")
}

// extendDuring keeps systemd's stop timeout ahead of a drain that may last
// up to d, until the returned func is called.
func (n *notifier) extendDuring(d time.Duration) (stop func()) {
	if n == nil {
		return func() {}
	}
	const every = 5 * time.Second
	end := time.Now().Add(d)
	extend := func() {
		left := time.Until(end) + every + 10*time.Second // room for cleanup
		n.send(fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d", left.Microseconds()), "STATUS=draining")
	}
	extend()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // ends when stop is called
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				extend()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
