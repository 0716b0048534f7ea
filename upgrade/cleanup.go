package upgrade

import (
	"context"
	"fmt"
	"time"
)

type cleanup struct {
	name string
	fn   func(ctx context.Context) error
}

// runCleanups runs the cleanup hooks in reverse order of registration, each
// under its own deadline. A hook that outlives its deadline is abandoned,
// not waited for: the process is about to exit.
func (u *Upgrader) runCleanups() {
	u.regMu.Lock()
	hooks := append([]cleanup(nil), u.cleanups...)
	u.regMu.Unlock()
	for i := len(hooks) - 1; i >= 0; i-- {
		h := hooks[i]
		start := time.Now()
		err := runHook(h, u.opts.CleanupTimeout)
		d := ms(time.Since(start))
		if err != nil {
			// Data a hook failed to persist or close needs a person's look.
			u.log.Error().Err(err).Str("hook", h.name).Float64("duration_ms", d).Msg("cleanup failed")
			continue
		}
		u.log.Info().Str("hook", h.name).Float64("duration_ms", d).Msg("cleanup done")
	}
}

func runHook(h cleanup, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { // ends when the hook returns, which may be after the deadline
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("panic: %v", r)
			}
		}()
		done <- h.fn(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("timed out after %v", timeout)
	}
}
