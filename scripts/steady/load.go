package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// loadResult is what a load tool reports.
type loadResult struct {
	reqs    int64 // answered with 2xx
	rps     float64
	errors  int64 // failed requests, non-2xx answers, socket errors
	summary string
}

// loadRun loads http://addr/healthz for d with wrk (h1) or h2load (h2c),
// one thread each, as the figures were taken (wrk -t1 -c16).
func loadRun(ctx context.Context, proto, addr string, conns, streams int, d time.Duration) (loadResult, error) {
	url := "http://" + addr + "/healthz"
	secs := strconv.Itoa(int(d.Round(time.Second) / time.Second))
	var args []string
	switch proto {
	case "h1":
		args = []string{"wrk", "-t1", "-c" + strconv.Itoa(conns), "-d" + secs + "s", "--timeout", "5s", url}
	case "h2c":
		args = []string{"h2load", "-t1", "-c" + strconv.Itoa(conns), "-m" + strconv.Itoa(streams), "-D", secs, url}
	}
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return loadResult{}, fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, out)
	}
	if proto == "h1" {
		return parseWrk(string(out))
	}
	return parseH2load(string(out))
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in ([0-9.]+)([a-z]+)`)
	wrkRPS      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)

	h2Finished = regexp.MustCompile(`finished in [0-9.]+m?s, ([0-9.]+) req/s`)
	h2Requests = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2Status   = regexp.MustCompile(`status codes: (\d+) 2xx`)
)

func parseWrk(out string) (loadResult, error) {
	m := wrkRequests.FindStringSubmatch(out)
	r := wrkRPS.FindStringSubmatch(out)
	if m == nil || r == nil {
		return loadResult{}, fmt.Errorf("cannot read wrk's output:\n%s", out)
	}
	var res loadResult
	res.reqs, _ = strconv.ParseInt(m[1], 10, 64)
	res.rps, _ = strconv.ParseFloat(r[1], 64)
	res.summary = strings.TrimSpace(m[0])
	if n := wrkNon2xx.FindStringSubmatch(out); n != nil {
		v, _ := strconv.ParseInt(n[1], 10, 64)
		res.errors += v
		res.reqs -= v
	}
	if s := wrkSocket.FindStringSubmatch(out); s != nil {
		for _, f := range s[1:] {
			v, _ := strconv.ParseInt(f, 10, 64)
			res.errors += v
		}
	}
	return res, nil
}

func parseH2load(out string) (loadResult, error) {
	f := h2Finished.FindStringSubmatch(out)
	m := h2Requests.FindStringSubmatch(out)
	s := h2Status.FindStringSubmatch(out)
	if f == nil || m == nil || s == nil {
		return loadResult{}, fmt.Errorf("cannot read h2load's output:\n%s", out)
	}
	var res loadResult
	res.rps, _ = strconv.ParseFloat(f[1], 64)
	res.reqs, _ = strconv.ParseInt(s[1], 10, 64)
	// h2load's "failed" includes the errored and timed-out ones; a
	// non-2xx answer counts as succeeded.
	failed, _ := strconv.ParseInt(m[5], 10, 64)
	succeeded, _ := strconv.ParseInt(m[4], 10, 64)
	res.errors = failed + max(0, succeeded-res.reqs)
	res.summary = strings.TrimSpace(m[0])
	return res, nil
}
