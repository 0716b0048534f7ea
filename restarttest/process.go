package restarttest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// scanEvery is how often the kit looks for the server's processes in
// /proc. A process that lives less than this and leaves the process group
// (setsid) is missed unless the kit's process is a child subreaper.
const scanEvery = 20 * time.Millisecond

// procTable tracks every process of the server under test: the first one
// the kit started, every process in a process group it tracks (the
// server's, and each restart command's), and every descendant of those.
// It learns of them by scanning /proc, and of which hold the listening
// socket, which is how generations are counted without a header.
type procTable struct {
	t0   time.Time
	port int // the server's TCP port; zero disables the listener scan

	mu     sync.Mutex
	pgids  map[int]bool
	procs  map[int]*proc // by pid; a pid reused later replaces its entry
	order  []*proc       // every process ever tracked, in order of discovery
	owned  map[int]bool  // pids an exec.Cmd waits for: never reaped here
	sent   map[sent]bool // signals sent by signalAll
	stopCh chan struct{}
	done   chan struct{}
}

// proc is one tracked process.
type proc struct {
	PID       int
	PGID      int
	start     uint64 // start time in clock ticks after boot: tells a reused pid apart
	Seen      time.Duration
	Listening bool          // holds the listening socket now
	Listened  time.Duration // when first seen holding it; -1 if never (or only once)
	alive     bool
	// firstHeld is when it was first seen holding the socket, and held
	// how many scans in a row it has held it. A process counts as one
	// that listened only after two scans: between fork and exec a child
	// holds its parent's sockets for a moment, and would count as a
	// generation of its own.
	firstHeld time.Duration
	held      int
}

// procStat is what the kit reads of /proc/PID/stat.
type procStat struct {
	pid, ppid, pgid int
	state           byte
	start           uint64
}

func newProcTable(t0 time.Time, port int) *procTable {
	return &procTable{t0: t0, port: port, pgids: map[int]bool{}, procs: map[int]*proc{}, owned: map[int]bool{}, sent: map[sent]bool{}}
}

// addGroup tracks every process in process group pgid from now on, and
// owned, a pid that an exec.Cmd waits for.
func (pt *procTable) addGroup(pgid, owned int) {
	pt.mu.Lock()
	pt.pgids[pgid] = true
	pt.owned[owned] = true
	pt.mu.Unlock()
	pt.scan()
}

// run scans until stop is called. Owned by Check.
func (pt *procTable) run() {
	pt.stopCh = make(chan struct{})
	pt.done = make(chan struct{})
	go func() { // ends when stop is called
		defer close(pt.done)
		tick := time.NewTicker(scanEvery)
		defer tick.Stop()
		for {
			select {
			case <-pt.stopCh:
				return
			case <-tick.C:
				pt.scan()
			}
		}
	}()
}

func (pt *procTable) stop() {
	if pt.stopCh != nil {
		close(pt.stopCh)
		<-pt.done
		pt.stopCh = nil
	}
}

// scan reads /proc once and updates the table.
func (pt *procTable) scan() {
	stats := readStats()
	var listen map[uint64]bool
	if pt.port > 0 {
		listen = listeningInodes(pt.port)
	}
	now := time.Since(pt.t0)

	pt.mu.Lock()
	defer pt.mu.Unlock()
	// Mark the living; a pid whose start time changed is a new process.
	for pid, p := range pt.procs {
		st, ok := stats[pid]
		p.alive = ok && st.start == p.start && st.state != 'Z'
		if ok && st.start == p.start && st.state == 'Z' && !pt.owned[pid] {
			// An orphaned generation that became this process's child
			// (as a subreaper): reap it. ECHILD when it is not ours.
			var ws unix.WaitStatus
			unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
	}
	// Track new members of the groups, and descendants of the tracked,
	// until nothing changes (a child may be listed before its parent).
	for changed := true; changed; {
		changed = false
		for pid, st := range stats {
			if st.state == 'Z' {
				continue
			}
			if p, ok := pt.procs[pid]; ok && p.start == st.start {
				continue
			}
			parent, ok := pt.procs[st.ppid]
			if !pt.pgids[st.pgid] && !(ok && parent.alive) {
				continue
			}
			p := &proc{PID: pid, PGID: st.pgid, start: st.start, Seen: now, Listened: -1, alive: true}
			pt.procs[pid] = p
			pt.order = append(pt.order, p)
			changed = true
		}
	}
	if listen == nil {
		return
	}
	for _, p := range pt.procs {
		if !p.alive {
			p.Listening = false
			continue
		}
		p.Listening = holdsAny(p.PID, listen)
		switch {
		case !p.Listening:
			p.held = 0
		case p.held == 0:
			p.held, p.firstHeld = 1, now
		default:
			p.held++
		}
		if p.held >= 2 && p.Listened < 0 {
			p.Listened = p.firstHeld
		}
	}
}

// alive returns copies of the tracked processes alive at the last scan,
// oldest first.
func (pt *procTable) alive() []proc {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	var out []proc
	for _, p := range pt.order {
		if p.alive && pt.procs[p.PID] == p {
			out = append(out, *p)
		}
	}
	return out
}

// isAlive reports whether pid is a tracked process alive at the last scan.
func (pt *procTable) isAlive(pid int) bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	p, ok := pt.procs[pid]
	return ok && p.alive
}

// serving returns the pids of the living processes that hold the
// listening socket, oldest first; every living one if none does or the
// port is unknown.
func (pt *procTable) serving() []int {
	var all, listening []int
	for _, p := range pt.alive() {
		all = append(all, p.PID)
		if p.Listening {
			listening = append(listening, p.PID)
		}
	}
	if len(listening) > 0 {
		return listening
	}
	return all
}

// listened returns every process that ever held the listening socket.
func (pt *procTable) listened() []proc {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	var out []proc
	for _, p := range pt.order {
		if p.Listened >= 0 {
			out = append(out, *p)
		}
	}
	slices.SortFunc(out, func(a, b proc) int { return int(a.Listened - b.Listened) })
	return out
}

// signalAll sends sig to every tracked process alive at the last scan
// that has not had it yet, by pid, after checking that the pid still
// names the same process. Once only: a server may take a second SIGTERM
// as "exit now, without draining".
func (pt *procTable) signalAll(sig unix.Signal) {
	for _, p := range pt.alive() {
		k := sent{p.PID, p.start, sig}
		pt.mu.Lock()
		done := pt.sent[k]
		pt.sent[k] = true
		pt.mu.Unlock()
		if done {
			continue
		}
		if st, ok := readStat(p.PID); ok && st.start == p.start {
			unix.Kill(p.PID, sig)
		}
	}
}

// sent is a signal sent to a process.
type sent struct {
	pid   int
	start uint64
	sig   unix.Signal
}

// stopAll ends every tracked process: SIGTERM, then SIGKILL to those left
// after grace, scanning meanwhile for processes started during the stop.
// It returns an error naming any process still alive at the end.
func (pt *procTable) stopAll(grace time.Duration) error {
	pt.scan()
	pt.signalAll(unix.SIGTERM)
	if !pt.waitGone(grace, unix.SIGTERM) {
		pt.signalAll(unix.SIGKILL)
		pt.waitGone(5*time.Second, unix.SIGKILL)
	}
	if left := pt.alive(); len(left) > 0 {
		var pids []string
		for _, p := range left {
			pids = append(pids, strconv.Itoa(p.PID))
		}
		return fmt.Errorf("server processes still running after SIGKILL: pids %s", strings.Join(pids, " "))
	}
	return nil
}

// waitGone scans until no tracked process is alive, sending sig to any
// found meanwhile, for at most d. It reports whether all are gone.
func (pt *procTable) waitGone(d time.Duration, sig unix.Signal) bool {
	deadline := time.Now().Add(d)
	for {
		pt.scan()
		if len(pt.alive()) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		pt.signalAll(sig) // a process started since the last signal
		time.Sleep(scanEvery)
	}
}

// readStats reads /proc/*/stat.
func readStats() map[int]procStat {
	out := map[int]procStat{}
	d, err := os.Open("/proc")
	if err != nil {
		return out
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		if st, ok := readStat(pid); ok {
			out[pid] = st
		}
	}
	return out
}

// readStat parses /proc/PID/stat; the command name may hold spaces and
// parentheses, so fields are counted after the last ')'.
func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 20 {
		return procStat{}, false
	}
	st := procStat{pid: pid, state: f[0][0]}
	st.ppid, _ = strconv.Atoi(f[1])
	st.pgid, _ = strconv.Atoi(f[2])
	st.start, _ = strconv.ParseUint(f[19], 10, 64)
	return st, true
}

// listeningInodes returns the inodes of the TCP sockets listening on port,
// from /proc/net/tcp and tcp6 (this network namespace).
//
// The kernel lists the listening sockets first, then the established and
// TIME_WAIT ones; under load the latter run to many megabytes, which the
// kernel formats only as they are read. So reading stops at the first
// socket that is not listening.
func listeningInodes(port int) map[uint64]bool {
	out := map[uint64]bool{}
	want := fmt.Sprintf(":%04X", port)
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // the header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 || fl[3] != "0A" {
				break
			}
			if !strings.HasSuffix(fl[1], want) {
				continue
			}
			if ino, err := strconv.ParseUint(fl[9], 10, 64); err == nil && ino != 0 {
				out[ino] = true
			}
		}
		f.Close()
	}
	return out
}

// holdsAny reports whether process pid has a file descriptor on one of
// the socket inodes.
func holdsAny(pid int, inodes map[uint64]bool) bool {
	if len(inodes) == 0 {
		return false
	}
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	d, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, n := range names {
		l, err := os.Readlink(dir + "/" + n)
		if err != nil || !strings.HasPrefix(l, "socket:[") {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(l[len("socket:["):], "]"), 10, 64)
		if err == nil && inodes[ino] {
			return true
		}
	}
	return false
}
