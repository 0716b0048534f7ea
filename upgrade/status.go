package upgrade

import (
	"encoding/json"
	"time"
)

// State is where a generation is in its lifecycle.
type State string

// The states of a generation, in the order they usually come.
const (
	StateStarting  State = "starting"  // listening, not yet ready
	StateServing   State = "serving"   // ready; the generation that serves
	StateUpgrading State = "upgrading" // serving while a new generation starts
	StateStopping  State = "stopping"  // stop requested: not ready, still serving for the shutdown delay
	StateDraining  State = "draining"  // not accepting; finishing in-flight work
	StateStopped   State = "stopped"   // drained and cleaned up
)

// Status is a snapshot of a generation, for operators and health checks.
type Status struct {
	PID        int       `json:"pid"`
	ParentPID  int       `json:"parent_pid,omitempty"`
	Generation int       `json:"generation"`
	Version    string    `json:"version"`
	State      State     `json:"state"`
	StartedAt  time.Time `json:"started_at"`
	Uptime     Duration  `json:"uptime_ms"`
	// Mode is how this generation hands over: "chain" (each generation
	// starts the next and exits), "supervised" (a supervisor that never
	// exits starts every generation) or "standalone" (no handoff).
	Mode string `json:"mode"`
	// InFlight, Connections and Requests count the service's traffic:
	// every server but the control servers (ServeOptions.Control).
	InFlight    int64 `json:"in_flight_requests"`
	Connections int64 `json:"open_connections"`
	// Requests counts requests this generation started to serve.
	Requests int64 `json:"requests"`
	// Servers has the same counts for each server, control ones included.
	Servers []ServerStatus `json:"servers"`
	// Supervisor describes the supervisor, in supervised mode.
	Supervisor *SupervisorInfo `json:"supervisor,omitempty"`
	// UpgradePending is true while an upgrade request waits its turn.
	UpgradePending bool `json:"upgrade_pending"`
	// Upgrades counts upgrade attempts by result, over the life of the
	// service (carried from generation to generation).
	Upgrades UpgradeCounts `json:"upgrades"`
	// LastUpgrade is the most recent upgrade attempt, which for a new
	// generation is the one that started it. Nil before the first.
	LastUpgrade *UpgradeRecord `json:"last_upgrade,omitempty"`
	// LastDrain is this generation's drain once it began, or else the drain
	// of the generation it replaced, as that generation reported it.
	LastDrain *DrainRecord `json:"last_drain,omitempty"`
}

// ServerStatus is the traffic of one server this generation serves.
type ServerStatus struct {
	Name    string `json:"name"`
	Network string `json:"network"`
	Addr    string `json:"addr"`
	Control bool   `json:"control,omitempty"`
	// Requests and InFlight count requests, RPCs or messages, as the
	// server's kind does; a server that cannot tell leaves them zero.
	Requests    int64 `json:"requests"`
	InFlight    int64 `json:"in_flight"`
	Connections int64 `json:"open_connections"`
}

// SupervisorInfo describes the supervisor of a supervised service.
type SupervisorInfo struct {
	PID       int       `json:"pid"`
	Version   string    `json:"version"`
	StartedAt time.Time `json:"started_at"`
	// Execs counts the times it replaced its own binary in place.
	Execs int `json:"execs"`
}

// UpgradeCounts counts upgrade attempts by result.
type UpgradeCounts struct {
	Succeeded int64 `json:"succeeded"`
	Failed    int64 `json:"failed"`
}

// UpgradeRecord describes one upgrade attempt.
type UpgradeRecord struct {
	OK        bool      `json:"ok"`
	Source    string    `json:"source"` // "signal", "api", "queued", "forwarded", "crash"
	StartedAt time.Time `json:"started_at"`
	// Duration is from the start of the attempt to the new generation's
	// ready report (or to the failure).
	Duration      Duration `json:"duration_ms"`
	NewPID        int      `json:"new_pid,omitempty"`
	NewVersion    string   `json:"new_version,omitempty"`
	NewGeneration int      `json:"new_generation,omitempty"`
	Error         string   `json:"error,omitempty"`
}

// DrainRecord describes one drain: how each connection open when it began
// came to be closed, and how long it took.
type DrainRecord struct {
	Reason    string    `json:"reason"` // "handoff" or "stop"
	Gen       int       `json:"generation"`
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
	Duration  Duration  `json:"duration_ms"`
	// ConnectionsAtStart is the number of connections open when the drain
	// began, on every server.
	ConnectionsAtStart int64 `json:"connections_at_start"`
	// RequestsWhileDraining counts requests that began after the drain did.
	RequestsWhileDraining int64       `json:"requests_while_draining"`
	Closed                CloseCounts `json:"closed"`
}

// CloseCounts counts connections closed during a drain, by how.
type CloseCounts struct {
	// AfterResponse: HTTP/1 connections closed after a response that
	// carried Connection: close, and connections of other protocols
	// closed after the protocol's own goodbye (a raw TCP server's
	// "reconnect" message).
	AfterResponse int64 `json:"after_response"`
	// Idle: HTTP/1 connections idle longer than the grace period, closed by
	// the drain with a half-close.
	Idle int64 `json:"idle"`
	// ByPeer: idle HTTP/1 connections that the client closed first, and
	// connections of other protocols that the client closed before the
	// server said goodbye.
	ByPeer int64 `json:"by_peer"`
	// HTTP2: HTTP/2 connections, closed after GOAWAY and their last stream
	// (gRPC connections are counted here too).
	HTTP2 int64 `json:"http2"`
	// HTTP2TwoStep: HTTP/2 connections ended with the two-step GOAWAY of
	// RFC 9113 §6.8 (a first GOAWAY and a PING, the final GOAWAY after its
	// acknowledgement), a subset of HTTP2.
	HTTP2TwoStep int64 `json:"http2_two_step,omitempty"`
	// StreamsBetweenGoaways: HTTP/2 streams the clients opened between the
	// two GOAWAYs, all of them served.
	StreamsBetweenGoaways int64 `json:"streams_between_goaways,omitempty"`
	// Hijacked: connections taken over by a handler (WebSocket) that ended.
	Hijacked int64 `json:"hijacked"`
	// Forced: connections still open at the drain deadline.
	Forced int64 `json:"forced"`
}

// Total is the number of connections closed, graceful or not.
func (c CloseCounts) Total() int64 {
	return c.AfterResponse + c.Idle + c.ByPeer + c.HTTP2 + c.Hijacked + c.Forced
}

func (c *CloseCounts) add(o CloseCounts) {
	c.AfterResponse += o.AfterResponse
	c.Idle += o.Idle
	c.ByPeer += o.ByPeer
	c.HTTP2 += o.HTTP2
	c.Hijacked += o.Hijacked
	c.Forced += o.Forced
	c.HTTP2TwoStep += o.HTTP2TwoStep
	c.StreamsBetweenGoaways += o.StreamsBetweenGoaways
}

// Duration is a time.Duration that encodes in JSON as fractional
// milliseconds, which reads well and sorts in tools such as jq.
type Duration time.Duration

// Milliseconds is d in milliseconds, with a fraction.
func (d Duration) Milliseconds() float64 { return ms(time.Duration(d)) }

// MarshalJSON encodes d as milliseconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.Milliseconds())
}

// UnmarshalJSON decodes milliseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var ms float64
	if err := json.Unmarshal(b, &ms); err != nil {
		return err
	}
	*d = Duration(ms * float64(time.Millisecond))
	return nil
}

// ms is the value logged for a duration: milliseconds, as a float.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
