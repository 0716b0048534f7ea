package restarttest

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"time"
)

// The picture: three panels over one time axis (seconds since the load
// started), a vertical mark at each restart and at each generation's first
// answer.
const (
	plotW       = 1100
	plotLeft    = 78
	plotRight   = 24
	plotBucket  = 100 * time.Millisecond
	panelGap    = 46
	legendTop   = 50
	firstPanel  = 104
	panelReqH   = 190
	panelFailH  = 120
	panelLatH   = 190
	xAxisHeight = 40
)

var outcomeColors = [numOutcomes]string{
	OK: "#a9d8a4", Refused: "#d62728", Reset: "#ff7f0e", EOF: "#9467bd", Timeout: "#8c564b",
	Non2xx: "#e377c2", WrongBody: "#17becf", RefusedStream: "#bcbd22", StreamReset: "#7f7f7f",
	TLSError: "#1f77b4", ProtocolError: "#393b79", NotServing: "#637939", Other: "#222222",
}

const (
	colorRestart = "#3a3a3a"
	colorGen     = "#1a9850"
	colorP50     = "#2166ac"
	colorP99     = "#e08214"
	colorMax     = "#b2182b"
)

// bucket is what happened in one 100 ms.
type bucket struct {
	counts    Counts
	latencies []time.Duration // of answered requests, slow ones left out
}

// WriteSVG draws the timeline as an SVG picture: requests per 100 ms by
// outcome, failed requests per 100 ms by kind on their own scale, and the
// latency percentiles (p50, p99, max) of answered requests per 100 ms
// (requests of Config.SlowPath left out, since they are slow on purpose);
// with a mark at each restart and at each generation's first answer.
func (r *Report) WriteSVG(w io.Writer) error {
	bw := bufio.NewWriter(w)
	p := &plotter{w: bw, r: r}
	p.draw()
	return bw.Flush()
}

type plotter struct {
	w       *bufio.Writer
	r       *Report
	t0, t1  time.Duration // the time axis
	buckets []bucket
}

func (p *plotter) printf(format string, args ...any) { fmt.Fprintf(p.w, format, args...) }

// x maps a time since the kit started to a horizontal position.
func (p *plotter) x(t time.Duration) float64 {
	return plotLeft + float64(t-p.t0)/float64(p.t1-p.t0)*float64(plotW-plotLeft-plotRight)
}

func (p *plotter) draw() {
	r := p.r
	p.t0, p.t1 = r.LoadStarted, r.LoadEnded
	for _, q := range r.Timeline {
		p.t0 = min(p.t0, q.Start)
		p.t1 = max(p.t1, q.End)
	}
	if p.t1 <= p.t0 {
		p.t1 = p.t0 + time.Second
	}
	n := int((p.t1-p.t0)/plotBucket) + 1
	p.buckets = make([]bucket, n)
	for _, q := range r.Timeline {
		b := &p.buckets[int((q.End-p.t0)/plotBucket)]
		b.counts[q.Outcome]++
		if q.Answered() && !q.Slow() {
			b.latencies = append(b.latencies, q.Latency())
		}
	}

	reqTop := float64(firstPanel)
	failTop := reqTop + panelReqH + panelGap
	latTop := failTop + panelFailH + panelGap
	height := latTop + panelLatH + xAxisHeight + 8

	p.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f" font-family="Helvetica, Arial, sans-serif" font-size="12">`+"\n", plotW, height, plotW, height)
	p.printf(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	title := r.Title
	if title == "" {
		title = r.URL
	}
	p.printf(`<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", plotLeft, esc(title))
	verdict := "PASS"
	color := colorGen
	if !r.OK() {
		verdict, color = "FAIL", colorMax
	}
	p.printf(`<text x="%d" y="40" font-size="13"><tspan fill="%s" font-weight="bold">%s</tspan>  %s  (%s; generations by %s)</text>`+"\n",
		plotLeft, color, verdict, esc(r.Line()), esc(modeList(r.Modes)), esc(r.GenerationsBy))
	p.legend()

	p.requestsPanel(reqTop)
	p.failuresPanel(failTop)
	p.latencyPanel(latTop)
	p.marks(reqTop, latTop+panelLatH)
	p.timeAxis(latTop + panelLatH)
	p.printf("</svg>\n")
}

func esc(s string) string { return html.EscapeString(s) }

// legend is one row: outcomes that occurred, latency lines, marks.
func (p *plotter) legend() {
	x := float64(plotLeft)
	y := float64(legendTop)
	item := func(draw func(x, y float64), label string) {
		if x+float64(16+7*len(label)) > plotW-plotRight {
			x = plotLeft
			y += 18
		}
		draw(x, y)
		p.printf(`<text x="%.1f" y="%.1f">%s</text>`+"\n", x+18, y+10, esc(label))
		x += 18 + 7*float64(len(label)) + 14
	}
	for o := range numOutcomes {
		if o != OK && p.r.Outcomes[o] == 0 {
			continue
		}
		item(func(x, y float64) {
			p.printf(`<rect x="%.1f" y="%.1f" width="12" height="12" fill="%s"/>`+"\n", x, y, outcomeColors[o])
		}, fmt.Sprintf("%s %d", o, p.r.Outcomes[o]))
	}
	line := func(color, dash string) func(x, y float64) {
		return func(x, y float64) {
			p.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2" %s/>`+"\n", x, y+6, x+14, y+6, color, dash)
		}
	}
	item(line(colorP50, ""), "p50")
	item(line(colorP99, ""), "p99")
	item(line(colorMax, `stroke-dasharray="2,2"`), "max")
	item(func(x, y float64) {
		p.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.2" stroke-dasharray="4,3"/>`+"\n", x+7, y-1, x+7, y+13, colorRestart)
	}, "restart")
	item(func(x, y float64) {
		p.printf(`<path d="M%.1f,%.1f l-5,-8 h10 z" fill="%s"/>`+"\n", x+7, y+12, colorGen)
	}, genLegend(p.r))
}

func genLegend(r *Report) string {
	if r.GenerationsBy == "" || r.GenerationsBy[0] == 'h' {
		return "generation's first answer"
	}
	return "generation's process first holds the socket"
}

// frame draws a panel's box, title and y ticks.
func (p *plotter) frame(top, h float64, title string) {
	p.printf(`<text x="%d" y="%.1f" font-size="13" font-weight="bold">%s</text>`+"\n", plotLeft, top-8, esc(title))
	p.printf(`<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="none" stroke="#999"/>`+"\n", plotLeft, top, plotW-plotLeft-plotRight, h)
}

// yTicks draws horizontal grid lines for a linear axis from 0 to top value.
func (p *plotter) yTicks(top, h float64, vmax float64, unit string) {
	step := niceStep(vmax / 4)
	for v := 0.0; v <= vmax+step/1000; v += step {
		y := top + h - v/vmax*h
		p.printf(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e4e4e4"/>`+"\n", plotLeft, y, plotW-plotRight, y)
		p.printf(`<text x="%d" y="%.1f" text-anchor="end">%s%s</text>`+"\n", plotLeft-6, y+4, trimFloat(v), unit)
	}
}

func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= x {
			return m * e
		}
	}
	return 10 * e
}

func trimFloat(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%g", v)
}

// bars draws stacked bars of the outcomes in each bucket.
func (p *plotter) bars(top, h, vmax float64, outcomes []Outcome) {
	bw := p.x(p.t0+plotBucket) - p.x(p.t0)
	for i, b := range p.buckets {
		x := p.x(p.t0 + time.Duration(i)*plotBucket)
		y := top + h
		for _, o := range outcomes {
			c := b.counts[o]
			if c == 0 {
				continue
			}
			bh := float64(c) / vmax * h
			if o != OK && bh < 2 {
				bh = 2 // a single failure stays visible
			}
			y -= bh
			p.printf(`<rect x="%.2f" y="%.2f" width="%.2f" height="%.2f" fill="%s"/>`+"\n", x, y, max(bw-0.4, 0.6), bh, outcomeColors[o])
		}
	}
}

func (p *plotter) requestsPanel(top float64) {
	p.frame(top, panelReqH, "requests per 100 ms, by outcome (stacked)")
	vmax := 1.0
	for _, b := range p.buckets {
		vmax = max(vmax, float64(b.counts.Total()))
	}
	vmax = niceCeil(vmax)
	p.yTicks(top, panelReqH, vmax, "")
	all := make([]Outcome, numOutcomes)
	for o := range numOutcomes {
		all[o] = o
	}
	p.bars(top, panelReqH, vmax, all)
}

func niceCeil(v float64) float64 {
	s := niceStep(v / 4)
	return math.Ceil(v/s) * s
}

func (p *plotter) failuresPanel(top float64) {
	p.frame(top, panelFailH, "failed requests per 100 ms, by kind (own scale)")
	var kinds []Outcome
	for o := OK + 1; o < numOutcomes; o++ {
		if p.r.Outcomes[o] > 0 {
			kinds = append(kinds, o)
		}
	}
	if len(kinds) == 0 {
		p.printf(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="16" fill="%s">no request failed</text>`+"\n",
			float64(plotLeft+plotW-plotRight)/2, top+panelFailH/2+6, colorGen)
		return
	}
	vmax := 1.0
	for _, b := range p.buckets {
		vmax = max(vmax, float64(b.counts.Failed()))
	}
	vmax = niceCeil(vmax)
	p.yTicks(top, panelFailH, vmax, "")
	p.bars(top, panelFailH, vmax, kinds)
}

func (p *plotter) latencyPanel(top float64) {
	title := "latency of answered requests per 100 ms (log scale)"
	for _, q := range p.r.Timeline {
		if q.Slow() {
			title = "latency of answered requests per 100 ms, slow-path ones left out (log scale)"
			break
		}
	}
	p.frame(top, panelLatH, title)
	type point struct {
		x             float64
		p50, p99, max time.Duration
	}
	var pts []point
	lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
	for i, b := range p.buckets {
		if len(b.latencies) == 0 {
			continue
		}
		slices.Sort(b.latencies)
		pt := point{x: p.x(p.t0 + time.Duration(i)*plotBucket + plotBucket/2),
			p50: quantile(b.latencies, 0.5), p99: quantile(b.latencies, 0.99), max: b.latencies[len(b.latencies)-1]}
		pts = append(pts, pt)
		lo, hi = min(lo, pt.p50), max(hi, pt.max)
	}
	if len(pts) == 0 {
		return
	}
	// Decades from below the lowest p50 to above the highest max.
	dlo := math.Floor(math.Log10(max(float64(lo)/1e6, 1e-3)))
	dhi := math.Ceil(math.Log10(max(float64(hi)/1e6, 1e-3)))
	if dhi <= dlo {
		dhi = dlo + 1
	}
	y := func(d time.Duration) float64 {
		v := math.Log10(max(float64(d)/1e6, math.Pow(10, dlo)))
		return top + panelLatH - (v-dlo)/(dhi-dlo)*panelLatH
	}
	for dec := dlo; dec <= dhi; dec++ {
		yy := top + panelLatH - (dec-dlo)/(dhi-dlo)*panelLatH
		p.printf(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e4e4e4"/>`+"\n", plotLeft, yy, plotW-plotRight, yy)
		p.printf(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", plotLeft-6, yy+4, msLabel(math.Pow(10, dec)))
	}
	line := func(get func(point) time.Duration, color, extra string) {
		p.printf(`<polyline fill="none" stroke="%s" stroke-width="1.5" %s points="`, color, extra)
		for _, pt := range pts {
			p.printf("%.1f,%.1f ", pt.x, y(get(pt)))
		}
		p.printf(`"/>` + "\n")
	}
	line(func(pt point) time.Duration { return pt.max }, colorMax, `stroke-dasharray="2,2"`)
	line(func(pt point) time.Duration { return pt.p99 }, colorP99, "")
	line(func(pt point) time.Duration { return pt.p50 }, colorP50, "")
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func msLabel(v float64) string {
	switch {
	case v >= 1000:
		return trimFloat(v/1000) + " s"
	default:
		return trimFloat(v) + " ms"
	}
}

// marks draws a line at each restart and a marker at each generation's
// first answer, across the panels.
func (p *plotter) marks(top, bottom float64) {
	labelEvery := 1 + len(p.r.RestartLog)/40
	for i, e := range p.r.RestartLog {
		x := p.x(e.Start)
		color := colorRestart
		if e.Err != "" {
			color = colorMax
		}
		p.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1" stroke-dasharray="4,3" opacity="0.75"/>`+"\n", x, top, x, bottom, color)
		if i%labelEvery == 0 {
			p.printf(`<text x="%.1f" y="%.1f" font-size="10" fill="%s">R%d</text>`+"\n", x+2, top+11, color, e.Index)
		}
	}
	for _, g := range p.r.GenLog {
		x := p.x(g.At)
		p.printf(`<path d="M%.1f,%.1f l-4,-7 h8 z" fill="%s"><title>generation %s: %.1f ms</title></path>`+"\n", x, top, colorGen, esc(g.ID), ms(g.At-p.t0))
	}
}

func (p *plotter) timeAxis(bottom float64) {
	span := (p.t1 - p.t0).Seconds()
	step := niceStep(span / 12)
	for s := 0.0; s <= span+step/1000; s += step {
		x := p.x(p.t0 + time.Duration(s*float64(time.Second)))
		p.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999"/>`+"\n", x, bottom, x, bottom+4)
		p.printf(`<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, bottom+16, trimFloat(s))
	}
	p.printf(`<text x="%d" y="%.1f" text-anchor="middle">seconds since the load started</text>`+"\n", (plotLeft+plotW-plotRight)/2, bottom+32)
}
