package main

import "testing"

// Outputs of wrk 4.1.0 and h2load 1.52.0, as run by loadRun.
const (
	wrkOK = `Running 1s test @ http://127.0.0.1:18901/healthz
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   362.36us    1.24ms  22.57ms   96.47%
    Req/Sec    20.25k     3.88k   25.44k    60.00%
  20105 requests in 1.00s, 2.70MB read
Requests/sec:  20079.32
Transfer/sec:      2.70MB
`
	wrk404 = `Running 1s test @ http://127.0.0.1:18901/nothere
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   175.27us  225.75us   4.05ms   94.06%
    Req/Sec    23.33k     4.23k   27.17k    80.00%
  23144 requests in 1.00s, 3.88MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 23144
Requests/sec:  23107.51
Transfer/sec:      3.88MB
`
	h2OK = `finished in 1.00s, 9787.00 req/s, 373.01KB/s
requests: 9787 total, 9789 started, 9787 done, 9787 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 9787 2xx, 0 3xx, 0 4xx, 0 5xx
`
	h2404 = `finished in 14.25ms, 1403.61 req/s, 75.25KB/s
requests: 20 total, 20 started, 20 done, 0 succeeded, 20 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 20 4xx, 0 5xx
`
)

func TestParseLoadTools(t *testing.T) {
	tests := []struct {
		name   string
		parse  func(string) (loadResult, error)
		out    string
		reqs   int64
		rps    float64
		errors int64
	}{
		{"wrk", parseWrk, wrkOK, 20105, 20079.32, 0},
		{"wrk non-2xx and socket errors", parseWrk, wrk404, 0, 23107.51, 23147},
		{"h2load", parseH2load, h2OK, 9787, 9787, 0},
		{"h2load 4xx", parseH2load, h2404, 0, 1403.61, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := tt.parse(tt.out)
			if err != nil {
				t.Fatal(err)
			}
			if r.reqs != tt.reqs || r.rps != tt.rps || r.errors != tt.errors {
				t.Errorf("got %d answered, %v req/s, %d errors; want %d, %v, %d", r.reqs, r.rps, r.errors, tt.reqs, tt.rps, tt.errors)
			}
		})
	}
	if _, err := parseWrk("unable to connect to 127.0.0.1:1 Connection refused\n"); err == nil {
		t.Error("parseWrk of an error message: no error")
	}
	if _, err := parseH2load(""); err == nil {
		t.Error("parseH2load of nothing: no error")
	}
}

func TestPromValue(t *testing.T) {
	page := "# HELP go_memstats_mallocs_total x\n# TYPE go_memstats_mallocs_total counter\ngo_memstats_mallocs_total 1.234567e+06\n" +
		"go_memstats_mallocs_total_other 5\n"
	v, err := promValue([]byte(page), "go_memstats_mallocs_total")
	if err != nil || v != 1234567 {
		t.Errorf("promValue = %d, %v; want 1234567", v, err)
	}
	if _, err := promValue([]byte(page), "absent"); err == nil {
		t.Error("promValue of an absent metric: no error")
	}
}
