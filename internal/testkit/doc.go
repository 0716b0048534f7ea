// Package testkit is what the module's tests share, as tailscale's tstest
// is for its tests:
//
//   - WaitFor and Wait: wait for a state with a deadline, and say why it
//     did not come with the last error;
//   - Book and ReadLog: collect entries (a process's JSON log lines, a
//     socket's messages) as they come, and wait for one that matches;
//   - Conn: a raw HTTP/1.1 client connection that never retries;
//   - Start and StartHTTP: a server run inside the test process by a
//     standalone upgrade.Upgrader on a loopback port;
//   - ShortTempDir, FreeAddr, FreeUDPAddr: short directories for unix
//     sockets and loopback addresses;
//   - Logger and LogWriter: output to the test's log;
//   - SelfSigned: a TLS certificate for 127.0.0.1;
//   - MemKV: an in-memory store for the handlers and kvgrpc tests;
//   - ErrorKind and NewConnClient: what load clients count and use.
//
// Rules: only tests import it (and the test program e2e/systemd/loadclient);
// no shipped binary may link it. No test sleeps to wait for a state: it
// waits with WaitFor, or on a Book. A sleep that is the scenario itself
// (a request kept in flight, a client's pace) says so in a comment.
package testkit
