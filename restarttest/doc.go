// Package restarttest judges a server's restarts under load: it starts
// the server, sends requests from clients that retry nothing, restarts the
// server again and again, and reports every request's outcome, with a
// timeline that WriteSVG draws. cmd/handoff-check is the same engine as a
// command.
//
// A test calls Run, which fails it with a readable summary when a request
// or a restart failed or too few generations answered:
//
//	rep := restarttest.Run(t, restarttest.Config{
//		Command:      []string{bin, "-addr", addr},
//		URL:          "http://" + addr + "/",
//		RestartShell: "kill -HUP $SERVER_NEWEST_PID",
//		Restarts:     10,
//		PostPath:     "/echo",
//		GenHeader:    "X-Generation",
//	})
//
// Check does the same without a testing.TB and returns the report.
//
// The clients are honest: each owns its connections and sends a request
// once. HTTP/1.1 clients write requests and read answers on their own
// sockets. HTTP/2 clients use net/http's Transport.NewClientConn, one
// connection shared by Config.H2Streams clients, with no pool and no
// retry: a stream refused by a GOAWAY counts as RefusedStream, although a
// compliant client such as Go's own Transport would send it again. gRPC
// clients use grpc-go, whose transparent retry of RPCs the server refused
// unprocessed is always on; the kit counts those retries apart
// (Report.GRPCTransparentRetries) and disables configured retries.
//
// The rules:
//   - Traffic goes only to loopback addresses: Config.URL must name one,
//     and every connection is checked at the socket.
//   - The kit starts the server in a process group of its own and tracks,
//     by scanning /proc, every process in that group or in a restart
//     command's group, and every descendant of one. At the end it sends
//     each SIGTERM, then SIGKILL after Config.StopTimeout, by pid, and
//     returns only when none is left. A server that leaves its process
//     group and its parent within 20 ms escapes the scan unless the
//     calling process is a child subreaper (prctl PR_SET_CHILD_SUBREAPER,
//     as cmd/handoff-check is); the kit then reaps those it tracks.
//   - Restart functions run on the goroutine that called Check or Run, so
//     they may call t.Fatal; the kit still stops everything.
//   - Only one Check should manage a given port at a time: generations
//     without a header are the processes holding the listening socket.
package restarttest
