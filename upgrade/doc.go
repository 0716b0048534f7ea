// Package upgrade runs a Go network service so that it can replace itself
// with a new binary without refusing a connection or dropping a request,
// and stop gracefully on demand.
//
// On SIGHUP, or when Upgrade is called, a new generation starts from the
// binary at the process's path and inherits the listening sockets
// (through github.com/cloudflare/tableflip, or from the supervisor). Only
// once it has taken over does the old one stop accepting, drain its
// servers, run its cleanup hooks and return from Run. SIGTERM or SIGINT
// (or Shutdown, or the end of Run's context) stops the service the same
// way without a successor; a second SIGTERM or SIGINT makes Run return
// ErrForced at once.
//
// # The order of calls
//
// A process adopts it in this order, and the order is a rule:
//
//  1. Optionally Supervise, first in main: in the process that was started,
//     it runs the supervisor and returns true when the service has
//     stopped; in a generation it returns false at once.
//  2. New, once per process (tableflip allows only one).
//  3. Listen (ListenPacket, ListenNamed) for every socket the process
//     serves. A socket is inherited from the previous generation when it
//     had the same address; sockets not asked for again are closed.
//  4. Serve (ServePacket) for every server, OnCleanup for every resource
//     to release, InheritedState for state the previous generation hands
//     over.
//  5. Ready, once start-up has succeeded. The registrations of 3 and 4
//     fail after it.
//  6. Run, which returns when this generation has handed over or stopped,
//     after the drain and the cleanup hooks.
//
// # The commit point
//
// The old generation commits to leaving (stop accepting, drain, exit)
// only after the new generation has finished every step that can fail:
// its configuration, listeners, database, PID file (written beside its
// final name), control socket and probation. Ready is that point: the new
// generation reports ready over the handoff channel and waits for the
// answer, "take over" or "leave" (the old generation, or the supervisor,
// says "leave" when it is stopping itself). After "take over" nothing may
// make the new generation exit on its own: the PID file is renamed into
// place, and a failure then is logged, not fatal. If the old generation
// dies at any moment, whichever process still holds the sockets keeps
// serving: a new generation whose parent died before answering serves
// alone, and a new generation's output through its parent cannot kill it
// (SIGPIPE is handled). A signal or a stop that comes while the answer is
// being decided waits for it, and then follows it: a stop signal reaching
// an old generation after it handed over is passed on to the new one.
//
// # Servers
//
// A Server (Serve on a listener, Drain under a deadline) is any protocol:
// HTTP returns the one for an *http.Server, with a drain that loses no
// keep-alive request and the two-step GOAWAY of RFC 9113 for HTTP/2; the
// upgradegrpc package has one for grpc-go; a raw TCP server is a few lines
// (see the examples). A PacketServer serves datagrams. A Control server
// (ServeOptions.Control) accepts only in the serving generation.
//
// # Modes
//
// In chain mode, the default, each generation starts the next and exits
// once it has taken over. In supervisor mode (Supervise) the process that
// was started stays, holds the sockets and starts every generation as its
// child, so its pid never changes: what systemd, a container's PID 1 and a
// terminal need. As PID 1 without a supervisor, hot restart is refused,
// since the process's exit would kill the new generation. Standalone mode
// (Options.Standalone) keeps everything but the handoff: it is how a
// server is embedded in a process that is not its own, such as a test,
// and stopped with Shutdown.
//
// Every lifecycle transition is one structured zerolog event carrying pid
// and generation. A generation is 1 for the first process and one more for
// each successful handoff.
package upgrade
