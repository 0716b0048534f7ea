// Package upgrade runs a Go network service so that it can replace itself
// with a new binary without refusing a connection or dropping a request,
// and stop gracefully on demand.
//
// It wraps github.com/cloudflare/tableflip. On SIGHUP, or when Upgrade is
// called, the process re-executes the binary found at its own path and hands
// its listening sockets to the new process. Only once the new process has
// reported ready does the old one stop accepting, drain its HTTP servers,
// run its cleanup hooks and return from Run. SIGTERM or SIGINT (or Shutdown)
// stops the service the same way without a successor; a second SIGTERM or
// SIGINT makes Run return ErrForced at once.
//
// A process adopts it in this order, and the order is a rule:
//
//  1. New, once per process (tableflip allows only one).
//  2. Listen for every socket the process serves. Listeners are inherited
//     from the previous generation when it had the same address, so Listen
//     must be called before Ready; sockets not asked for again are closed.
//  3. Serve for every http.Server; OnCleanup for every resource to release.
//  4. Ready, once start-up has succeeded. The previous generation keeps
//     serving until then, and a process that exits before Ready fails the
//     upgrade without any effect on the service.
//  5. Run, which returns when this generation has handed over or stopped,
//     after the drain and the cleanup hooks.
//
// Every lifecycle transition is one structured zerolog event carrying pid
// and generation. A generation is 1 for the first process and one more for
// each successful handoff.
//
// Standalone mode (Options.Standalone) keeps everything but the handoff: it
// is how a server is embedded in a process that is not its own, such as a
// test, and stopped with Shutdown.
package upgrade
