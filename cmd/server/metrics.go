package main

import (
	"net/http"
	"time"

	"github.com/handoff-go/handoff/internal/kvstore"
	"github.com/handoff-go/handoff/upgrade"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsHandler serves this process's metrics in the Prometheus text
// format: the Go runtime and process, and the generation's own figures,
// read from its status at each scrape so that nothing is counted twice.
func metricsHandler(upg *upgrade.Upgrader, st *kvstore.Store) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&statusCollector{upg: upg, store: st},
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

var (
	descGeneration = prometheus.NewDesc("handoff_generation",
		"Generation of this process: 1 for the first, one more per handoff.", nil, nil)
	descRequests = prometheus.NewDesc("handoff_http_requests_total",
		"Requests this generation began to serve, by server (public, control, grpc).", []string{"server"}, nil)
	descInFlight = prometheus.NewDesc("handoff_http_requests_in_flight",
		"Requests being served now, by server.", []string{"server"}, nil)
	descConnections = prometheus.NewDesc("handoff_connections_open",
		"Connections open now, by server.", []string{"server"}, nil)
	descUpgrades = prometheus.NewDesc("handoff_upgrades_total",
		"Upgrade attempts over the life of the service, by result.", []string{"result"}, nil)
	descDrainSeconds = prometheus.NewDesc("handoff_last_drain_duration_seconds",
		"Duration of the last drain: this generation's, or the one it replaced.", nil, nil)
	descDrainCloses = prometheus.NewDesc("handoff_last_drain_closes",
		"Connections closed by the last drain, by how.", []string{"kind"}, nil)
	descUptime = prometheus.NewDesc("handoff_uptime_seconds",
		"Seconds since this generation started.", nil, nil)
	descCacheHits = prometheus.NewDesc("handoff_cache_hits_total",
		"Reads served from the cache.", nil, nil)
	descCacheMisses = prometheus.NewDesc("handoff_cache_misses_total",
		"Reads that went to the database.", nil, nil)
	descCacheEntries = prometheus.NewDesc("handoff_cache_entries",
		"Values in the cache now.", nil, nil)
)

// statusCollector turns upgrade.Status into metrics at scrape time.
type statusCollector struct {
	upg   *upgrade.Upgrader
	store *kvstore.Store
}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.upg.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descGeneration, float64(st.Generation))
	for _, sv := range st.Servers {
		counter(descRequests, float64(sv.Requests), sv.Name)
		gauge(descInFlight, float64(sv.InFlight), sv.Name)
		gauge(descConnections, float64(sv.Connections), sv.Name)
	}
	gauge(descUptime, time.Duration(st.Uptime).Seconds())
	counter(descUpgrades, float64(st.Upgrades.Succeeded), "succeeded")
	counter(descUpgrades, float64(st.Upgrades.Failed), "failed")
	if d := st.LastDrain; d != nil {
		gauge(descDrainSeconds, time.Duration(d.Duration).Seconds())
		for kind, n := range map[string]int64{
			"after_response": d.Closed.AfterResponse, "idle": d.Closed.Idle, "by_peer": d.Closed.ByPeer,
			"http2": d.Closed.HTTP2, "hijacked": d.Closed.Hijacked, "forced": d.Closed.Forced,
		} {
			gauge(descDrainCloses, float64(n), kind)
		}
	}
	if c.store != nil {
		cs := c.store.CacheStats()
		counter(descCacheHits, float64(cs.Hits))
		counter(descCacheMisses, float64(cs.Misses))
		gauge(descCacheEntries, float64(cs.Entries))
	}
}
