package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// report is what the soak measured; it is printed and written as JSON.
type report struct {
	Start    time.Time      `json:"start"`
	End      time.Time      `json:"end"`
	Minutes  float64        `json:"minutes"`
	Seed     uint64         `json:"seed"`
	Settings map[string]any `json:"settings"`

	Faults   map[string]int `json:"faults"` // done, by kind
	FaultLog []done         `json:"fault_log"`

	Results totals      `json:"results"`
	Runs    []runReport `json:"runs"`

	BrokerReconnect durStats `json:"broker_reconnect"` // broker up -> gnld's "mqtt: connection back"
	BrokerDelivery  durStats `json:"broker_delivery"`  // broker up -> first result at the subscriber
	StreamReconnect durStats `json:"stream_reconnect"` // stream server up -> capture time of the camera's first frame

	Memory memory `json:"memory"`

	Checks []check `json:"checks"`
	Pass   bool    `json:"pass"`
}

type totals struct {
	Produced     uint64 `json:"produced"` // sum of the cameras' "processed" in each run's final stats
	Receipts     uint64 `json:"receipts"` // result messages received, duplicates included
	Unique       uint64 `json:"unique"`   // distinct (run_id, camera, sequence)
	Duplicates   uint64 `json:"duplicates"`
	OutOfOrder   uint64 `json:"out_of_order"` // first receipts with a sequence below one already received (same run, camera)
	Missing      uint64 `json:"missing"`      // produced - unique
	SpoolDropped uint64 `json:"spool_dropped"`
	Lost         int64  `json:"lost"` // missing - spool_dropped
	UnknownRun   uint64 `json:"unknown_run"`
	BadPayloads  int    `json:"bad_payloads"`
}

type runReport struct {
	gnldRun
	FinalStats   bool                  `json:"final_stats"` // a stats message sent after SIGTERM arrived
	SpoolDropped uint64                `json:"spool_dropped"`
	Disconnects  uint64                `json:"mqtt_disconnects"`
	Cameras      map[string]*camReport `json:"cameras"`
	RSSSlope     *float64              `json:"rss_slope_mb_per_h,omitempty"`
}

type camReport struct {
	Produced   uint64 `json:"produced"` // stats: processed
	Unique     uint64 `json:"unique"`
	Duplicates uint64 `json:"duplicates"`
	OutOfOrder uint64 `json:"out_of_order"`
	Missing    int64  `json:"missing"`
	MaxSeq     uint64 `json:"max_seq"`
	Frames     uint64 `json:"frames"`  // stats: handed to the model
	Dropped    uint64 `json:"dropped"` // stats: live frames replaced by newer ones (sequence gaps)
	Skipped    uint64 `json:"skipped"` // stats: refused by the pipeline (sequence gaps)
	Bad        uint64 `json:"bad"`     // stats: bad frames (no sequence number)
	Reconnects uint64 `json:"reconnects"`
}

type durStats struct {
	N       int       `json:"n"`
	MedianS float64   `json:"median_s"`
	MaxS    float64   `json:"max_s"`
	ValuesS []float64 `json:"values_s"`
}

// MarshalJSON writes At and Dur in seconds, as their names say.
func (f fault) MarshalJSON() ([]byte, error) {
	return json.Marshal(faultJSON{f.At.Seconds(), f.Kind, f.Dur.Seconds()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (f *fault) UnmarshalJSON(b []byte) error {
	var v faultJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	f.At, f.Kind, f.Dur = time.Duration(v.At*float64(time.Second)), v.Kind, time.Duration(v.Dur*float64(time.Second))
	return nil
}

// done embeds fault: without its own methods it would take fault's and
// lose Start, End and Note.
type doneJSON struct {
	faultJSON
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Note  string    `json:"note,omitempty"`
}

func (d done) MarshalJSON() ([]byte, error) {
	return json.Marshal(doneJSON{faultJSON{d.At.Seconds(), d.Kind, d.Dur.Seconds()}, d.Start, d.End, d.Note})
}

func (d *done) UnmarshalJSON(b []byte) error {
	var v doneJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*d = done{fault{time.Duration(v.At * float64(time.Second)), v.Kind, time.Duration(v.Dur * float64(time.Second))}, v.Start, v.End, v.Note}
	return nil
}

type faultJSON struct {
	At   float64 `json:"at_s"`
	Kind string  `json:"kind"`
	Dur  float64 `json:"duration_s"`
}

func newDurStats(v []float64) durStats {
	d := durStats{N: len(v), ValuesS: v, MedianS: math.NaN(), MaxS: math.NaN()}
	if len(v) == 0 {
		d.ValuesS = []float64{}
		return d
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	d.MedianS = s[len(s)/2]
	if len(s)%2 == 0 {
		d.MedianS = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	d.MaxS = s[len(s)-1]
	return d
}

// MarshalJSON writes NaN (no sample) as null.
func (d durStats) MarshalJSON() ([]byte, error) {
	type plain durStats
	out := struct {
		plain
		MedianS *float64 `json:"median_s"`
		MaxS    *float64 `json:"max_s"`
	}{plain: plain(d)}
	if !math.IsNaN(d.MedianS) {
		out.MedianS, out.MaxS = &d.MedianS, &d.MaxS
	}
	return json.Marshal(out)
}

type memory struct {
	Method          string  `json:"method"`
	Samples         int     `json:"samples"`
	SamplesUsed     int     `json:"samples_used"`
	RSSSlopeMBPerH  float64 `json:"rss_slope_mb_per_h"`
	RSSMinMB        float64 `json:"rss_min_mb"`
	RSSMaxMB        float64 `json:"rss_max_mb"`
	GoroutineSlopeH float64 `json:"goroutine_slope_per_h"`
	GoroutinesMin   float64 `json:"goroutines_min"`
	GoroutinesMax   float64 `json:"goroutines_max"`
	// Between reloads: the same fit with each run cut at its SIGHUPs into
	// pieces, each with its own intercept, leaving out the first
	// memWarmUp after each reload. ReloadStepsMB: per SIGHUP, RSS
	// memWarmUp after it minus RSS just before it.
	RSSSlopeBetweenReloads float64   `json:"rss_slope_between_reloads_mb_per_h"`
	ReloadStepsMB          []float64 `json:"reload_steps_mb"`
	Series                 []sample  `json:"series"`
}

type check struct {
	Name   string `json:"name"`
	Target string `json:"target"`
	Value  string `json:"value"`
	Pass   bool   `json:"pass"`
}

// report puts together what happened.
func (e *env) report(opt options, plan []fault, faults []done, t0, end time.Time) *report {
	results, stats, bad := e.sub.snapshot()
	e.gnld.mu.Lock()
	runs := make([]gnldRun, len(e.gnld.runs))
	for i, r := range e.gnld.runs {
		runs[i] = *r
	}
	events := append([]logLine(nil), e.gnld.events...)
	crashes := e.gnld.crashes
	e.gnld.mu.Unlock()
	e.smu.Lock()
	samples := append([]sample(nil), e.samples...)
	e.smu.Unlock()

	rep := &report{
		Start: t0, End: end, Minutes: opt.minutes, Seed: opt.seed,
		Settings: map[string]any{
			"cameras":                   "line1: folder of MTD test images, looping, GNLD_CAMERA_LINE1_FPS=3; line2: ffmpeg MJPEG over HTTP on loopback, 2 fps, GNLD_CAMERA_LINE2_FPS=3",
			"bundle":                    opt.bundle,
			"GNLD_SPOOL_MAX":            spoolMax,
			"GNLD_STATS_INTERVAL":       statsInterval.String(),
			"reconnect_settings":        "gnld's defaults (GNLD_MQTT_RECONNECT_MAX, GNLD_RECONNECT_MIN and _MAX, GNLD_READ_TIMEOUT)",
			"GNLD_MQTT_QOS":             1,
			"broker":                    "mosquitto, persistence on (autosave 5 s), killed with SIGKILL",
			"subscriber":                "paho, QoS 1, clean session false",
			"faults_per_hour":           map[string]int{faultBroker: brokerPerHour, faultStream: streamPerHour, faultRestart: restartPerHour, faultHUP: hupPerHour, faultStarve: starvePerHour, faultFill: 1},
			"warm_up_s":                 warmUp.Seconds(),
			"cool_down_s":               coolDown.Seconds(),
			"gnld_restart_while_broker": "up (a restart waits for a broker outage to end, so each run's final stats arrive)",
			"planned_faults":            len(plan),
			"cpus":                      numCPU(),
			"stream_server_processes":   e.stream.Restarts,
		},
		Faults:   map[string]int{},
		FaultLog: faults,
	}
	for _, f := range faults {
		rep.Faults[f.Kind]++
	}

	// Results, by key and by (run, camera) in arrival order.
	byRun := map[string]*runReport{}
	rep.Runs = make([]runReport, 0, len(runs)) // no reallocation: byRun points into it
	for _, r := range runs {
		rr := &runReport{gnldRun: r, Cameras: map[string]*camReport{}}
		rep.Runs = append(rep.Runs, *rr)
		p := &rep.Runs[len(rep.Runs)-1]
		byRun[r.RunID] = p
	}
	cam := func(rr *runReport, name string) *camReport {
		c := rr.Cameras[name]
		if c == nil {
			c = &camReport{}
			rr.Cameras[name] = c
		}
		return c
	}
	type key struct {
		run, cam string
		seq      uint64
	}
	seen := map[key]int{}
	maxSeq := map[string]uint64{}
	for _, r := range results {
		rep.Results.Receipts++
		rr := byRun[r.RunID]
		if rr == nil {
			rep.Results.UnknownRun++
			continue
		}
		c := cam(rr, r.Camera)
		k := key{r.RunID, r.Camera, r.Sequence}
		seen[k]++
		if seen[k] > 1 {
			c.Duplicates++
			continue
		}
		c.Unique++
		mk := r.RunID + "/" + r.Camera
		if r.Sequence < maxSeq[mk] {
			c.OutOfOrder++
		}
		maxSeq[mk] = max(maxSeq[mk], r.Sequence)
		c.MaxSeq = max(c.MaxSeq, r.Sequence)
	}

	// Each run's final stats: the last stats message gnld sent during
	// the run's life, which must be after SIGTERM.
	sort.Slice(stats, func(i, j int) bool { return stats[i].Time.Before(stats[j].Time) })
	for i := range rep.Runs {
		rr := &rep.Runs[i]
		var last *statsMsg
		for j := range stats {
			s := &stats[j]
			if !s.Time.Before(rr.Start) && (rr.End.IsZero() || !s.Time.After(rr.End)) {
				last = s
			}
		}
		if last == nil {
			continue
		}
		rr.FinalStats = !rr.StopAsked.IsZero() && !last.Time.Before(rr.StopAsked)
		rr.SpoolDropped, rr.Disconnects = last.MQTT.SpoolDropped, last.MQTT.Disconnects
		for name, cs := range last.Cameras {
			c := cam(rr, name)
			c.Produced, c.Frames, c.Dropped, c.Skipped, c.Bad, c.Reconnects = cs.Processed, cs.Frames, cs.Dropped, cs.Skipped, cs.Bad, cs.Reconnects
		}
	}
	finals := 0
	for i := range rep.Runs {
		rr := &rep.Runs[i]
		if rr.FinalStats {
			finals++
		}
		rep.Results.SpoolDropped += rr.SpoolDropped
		for _, c := range rr.Cameras {
			c.Missing = int64(c.Produced) - int64(c.Unique)
			rep.Results.Produced += c.Produced
			rep.Results.Unique += c.Unique
			rep.Results.Duplicates += c.Duplicates
			rep.Results.OutOfOrder += c.OutOfOrder
		}
	}
	rep.Results.Missing = rep.Results.Produced - min(rep.Results.Produced, rep.Results.Unique)
	rep.Results.Lost = int64(rep.Results.Produced) - int64(rep.Results.Unique) - int64(rep.Results.SpoolDropped)
	rep.Results.BadPayloads = len(bad)

	// Reconnect times.
	runAt := func(t time.Time) *runReport {
		for i := range rep.Runs {
			r := &rep.Runs[i]
			if !t.Before(r.Start) && (r.End.IsZero() || t.Before(r.End)) {
				return r
			}
		}
		return nil
	}
	sort.Slice(results, func(i, j int) bool { return results[i].At.Before(results[j].At) })
	var brk, dlv, strm []float64
	for _, f := range faults {
		if f.End.IsZero() {
			continue
		}
		switch f.Kind {
		case faultBroker, faultFill:
			r := runAt(f.Start)
			if r == nil || r != runAt(f.End) {
				continue
			}
			for _, ev := range events {
				if ev.run == r.N && ev.Msg == "mqtt: connection back" && ev.Time.After(f.Start) {
					brk = append(brk, math.Max(0, ev.Time.Sub(f.End).Seconds()))
					break
				}
			}
			// The first result received after the broker's return that
			// gnld captured after the kill: one it spooled or made since,
			// not one the broker had kept from before.
			for _, res := range results {
				if res.At.After(f.End) && res.Captured.After(f.Start) {
					dlv = append(dlv, res.At.Sub(f.End).Seconds())
					break
				}
			}
		case faultStream:
			r := runAt(f.End)
			if r == nil {
				continue
			}
			first := time.Time{}
			for _, res := range results {
				if res.RunID == r.RunID && res.Camera == "line2" && res.Captured.After(f.End) &&
					(first.IsZero() || res.Captured.Before(first)) {
					first = res.Captured
				}
			}
			if !first.IsZero() && runAt(first) == r {
				strm = append(strm, first.Sub(f.End).Seconds())
			}
		}
	}
	rep.BrokerReconnect, rep.BrokerDelivery, rep.StreamReconnect = newDurStats(brk), newDurStats(dlv), newDurStats(strm)

	rep.Memory = memSlopes(samples, rep.Runs, reloadTimes(faults))

	// Checks against the targets.
	hours := opt.minutes / 60
	needBroker := int(math.Ceil(minBrokerPerHour * hours))
	needStream := int(math.Ceil(minStreamPerHour * hours))
	unclean := 0
	for _, r := range rep.Runs {
		if r.Exit != "0" && r.Exit != "" {
			unclean++
		}
	}
	add := func(name, target, value string, pass bool) {
		rep.Checks = append(rep.Checks, check{name, target, value, pass})
	}
	r := rep.Results
	add("results lost (produced - received unique - spool drops)", "0", fmt.Sprint(r.Lost), r.Lost == 0)
	add("spool drops: stats topic vs results missing", "equal", fmt.Sprintf("%d vs %d", r.SpoolDropped, r.Missing), r.SpoolDropped == r.Missing)
	add("spool filled to its bound", ">= 1 time", fmt.Sprintf("%d dropped", r.SpoolDropped), r.SpoolDropped > 0)
	add("median reconnect after the broker returns", fmt.Sprintf("<= %s", maxMedianBrokerReconnect), secs(rep.BrokerReconnect.MedianS),
		rep.BrokerReconnect.N > 0 && rep.BrokerReconnect.MedianS <= maxMedianBrokerReconnect.Seconds())
	add("broker restarts", fmt.Sprintf(">= %d", needBroker), fmt.Sprint(rep.Faults[faultBroker]+rep.Faults[faultFill]), rep.Faults[faultBroker]+rep.Faults[faultFill] >= needBroker)
	add("stream outages", fmt.Sprintf(">= %d", needStream), fmt.Sprint(rep.Faults[faultStream]), rep.Faults[faultStream] >= needStream)
	add("gnld crashes and unclean exits", "0", fmt.Sprintf("%d crashes, %d unclean", crashes, unclean), crashes == 0 && unclean == 0)
	unaccounted := 0
	for _, rr := range rep.Runs {
		for _, c := range rr.Cameras {
			if c.Frames != c.Produced+c.Dropped+c.Skipped {
				unaccounted++
			}
		}
	}
	add("sequence numbers accounted for (frames = results + dropped + skipped, per run and camera)", "all", fmt.Sprintf("%d not", unaccounted), unaccounted == 0)
	add("runs whose final stats arrived", fmt.Sprint(len(rep.Runs)), fmt.Sprint(finals), finals == len(rep.Runs))
	add("results of unknown runs, bad payloads", "0", fmt.Sprintf("%d, %d", r.UnknownRun, r.BadPayloads), r.UnknownRun == 0 && r.BadPayloads == 0)
	rep.Pass = true
	for _, c := range rep.Checks {
		rep.Pass = rep.Pass && c.Pass
	}
	return rep
}

// memSlopes fits RSS and goroutines against time by least squares. A
// restart resets memory, so the fit is within runs: one slope shared by
// all runs, each with its own intercept (the pooled within-run slope),
// leaving out each run's first memWarmUp. Runs with at least 5 minutes of
// samples past the warm-up also get their own RSS slope.
func memSlopes(samples []sample, runs []runReport, reloads []time.Time) memory {
	m := memory{
		Method: fmt.Sprintf("least squares within each gnld run (one slope, an intercept per run), samples every 5 s, first %s of each run left out", memWarmUp),
		Series: samples, Samples: len(samples), RSSMinMB: math.Inf(1), GoroutinesMin: math.Inf(1),
	}
	byRun := map[int][]sample{}
	withG := map[int][]sample{} // those where /metrics answered
	for _, s := range samples {
		m.RSSMinMB, m.RSSMaxMB = math.Min(m.RSSMinMB, s.RSSMB), math.Max(m.RSSMaxMB, s.RSSMB)
		if s.Goroutines >= 0 {
			m.GoroutinesMin, m.GoroutinesMax = math.Min(m.GoroutinesMin, s.Goroutines), math.Max(m.GoroutinesMax, s.Goroutines)
		}
		if s.Age >= memWarmUp.Seconds() {
			byRun[s.Run] = append(byRun[s.Run], s)
			if s.Goroutines >= 0 {
				withG[s.Run] = append(withG[s.Run], s)
			}
		}
	}
	if math.IsInf(m.RSSMinMB, 1) { // no sample (JSON has no infinity)
		m.RSSMinMB = 0
	}
	if math.IsInf(m.GoroutinesMin, 1) {
		m.GoroutinesMin = 0
	}
	for _, ss := range byRun {
		if len(ss) >= 3 {
			m.SamplesUsed += len(ss)
		}
	}
	rss := func(s sample) float64 { return s.RSSMB }
	m.RSSSlopeMBPerH = withinSlope(byRun, rss)
	m.GoroutineSlopeH = withinSlope(withG, func(s sample) float64 { return s.Goroutines })
	for i := range runs {
		ss := byRun[runs[i].N]
		if len(ss) < 3 || ss[len(ss)-1].Age-ss[0].Age < 300 {
			continue
		}
		v := withinSlope(map[int][]sample{runs[i].N: ss}, rss)
		runs[i].RSSSlope = &v
	}
	// Between reloads: piece k of a run starts at its k-th SIGHUP.
	pieces := map[int][]sample{}
	for _, s := range samples {
		if s.Age < memWarmUp.Seconds() {
			continue
		}
		k, settling := 0, false
		for _, t := range reloads {
			if !t.After(s.At) {
				k++
				settling = s.At.Sub(t) < memWarmUp
			}
		}
		if !settling {
			pieces[s.Run*1000+k] = append(pieces[s.Run*1000+k], s)
		}
	}
	m.RSSSlopeBetweenReloads = withinSlope(pieces, rss)
	m.ReloadStepsMB = []float64{}
	for _, t := range reloads {
		var before, after *sample
		for i := range samples {
			s := &samples[i]
			if s.At.Before(t) {
				before = s
			} else if before != nil && s.Run == before.Run && s.At.Sub(t) >= memWarmUp {
				after = s
				break
			}
		}
		if before != nil && after != nil {
			m.ReloadStepsMB = append(m.ReloadStepsMB, after.RSSMB-before.RSSMB)
		}
	}
	return m
}

// reloadTimes are the SIGHUPs sent.
func reloadTimes(faults []done) []time.Time {
	var out []time.Time
	for _, f := range faults {
		if f.Kind == faultHUP {
			out = append(out, f.Start)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// withinSlope is the least-squares slope of y against age (per hour)
// shared by the groups, each with its own intercept; groups of fewer than
// 3 samples are left out. 0 when there is nothing to fit (samples_used
// says so).
func withinSlope(groups map[int][]sample, y func(sample) float64) float64 {
	var sxy, sxx float64
	for _, ss := range groups {
		if len(ss) < 3 {
			continue
		}
		var mx, my float64
		for _, s := range ss {
			mx += s.Age / 3600
			my += y(s)
		}
		mx, my = mx/float64(len(ss)), my/float64(len(ss))
		for _, s := range ss {
			sxy += (s.Age/3600 - mx) * (y(s) - my)
			sxx += (s.Age/3600 - mx) * (s.Age/3600 - mx)
		}
	}
	if sxx == 0 {
		return 0
	}
	return sxy / sxx
}

func steps(v []float64) string {
	var out []string
	for _, x := range v {
		out = append(out, fmt.Sprintf("%+.0f", x))
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, " ")
}

func secs(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f s", v)
}

// recompute reads a report written before, computes its memory figures
// again from its samples (after a change to how they are computed), writes
// it back and prints it.
func recompute(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	r.Memory = memSlopes(r.Memory.Series, r.Runs, reloadTimes(r.FaultLog))
	if err := r.write(path); err != nil {
		return err
	}
	r.print(os.Stdout)
	return nil
}

func (r *report) write(path string) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// print writes the report as tables.
func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "\ngnld soak: %.0f minutes (%s to %s UTC), seed %d\n\n", r.Minutes,
		r.Start.UTC().Format("2006-01-02 15:04:05"), r.End.UTC().Format("15:04:05"), r.Seed)
	if o, _ := r.Settings["overrides"].([]string); len(o) > 0 {
		fmt.Fprintf(w, "gnld settings overridden by the caller: %s\n\n", strings.Join(o, " "))
	}
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	kinds := []string{faultBroker, faultFill, faultStream, faultRestart, faultHUP, faultStarve}
	var fs []string
	for _, k := range kinds {
		fs = append(fs, fmt.Sprintf("%s %d", k, r.Faults[k]))
	}
	fmt.Fprintf(tw, "faults\t%s\n", strings.Join(fs, ", "))
	x := r.Results
	fmt.Fprintf(tw, "results produced (gnld's stats)\t%d\n", x.Produced)
	fmt.Fprintf(tw, "received (unique / receipts)\t%d / %d\n", x.Unique, x.Receipts)
	fmt.Fprintf(tw, "duplicates\t%d\n", x.Duplicates)
	fmt.Fprintf(tw, "out of order\t%d\n", x.OutOfOrder)
	fmt.Fprintf(tw, "missing / spool drops (stats)\t%d / %d\n", x.Missing, x.SpoolDropped)
	fmt.Fprintf(tw, "lost\t%d\n", x.Lost)
	ds := func(d durStats) string {
		return fmt.Sprintf("median %s, max %s (n=%d)", secs(d.MedianS), secs(d.MaxS), d.N)
	}
	fmt.Fprintf(tw, "broker up -> gnld reconnected\t%s\n", ds(r.BrokerReconnect))
	fmt.Fprintf(tw, "broker up -> first result received\t%s\n", ds(r.BrokerDelivery))
	fmt.Fprintf(tw, "stream up -> first frame captured\t%s\n", ds(r.StreamReconnect))
	m := r.Memory
	fmt.Fprintf(tw, "RSS\t%.1f-%.1f MB, slope %+.2f MB/h (%d of %d samples)\n", m.RSSMinMB, m.RSSMaxMB, m.RSSSlopeMBPerH, m.SamplesUsed, m.Samples)
	fmt.Fprintf(tw, "RSS between reloads\tslope %+.2f MB/h; RSS step %s after each SIGHUP: %s MB\n", m.RSSSlopeBetweenReloads, memWarmUp, steps(m.ReloadStepsMB))
	fmt.Fprintf(tw, "goroutines\t%.0f-%.0f, slope %+.2f per hour\n", m.GoroutinesMin, m.GoroutinesMax, m.GoroutineSlopeH)
	tw.Flush()

	fmt.Fprintln(w, "\nper gnld run:")
	tw = tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "run\trun_id\tlife\tending\tfinal stats\tcamera\tproduced\tunique\tdup\tooo\tmissing\tgaps (dropped+skipped)\tspool drops\tRSS MB/h")
	for _, rr := range r.Runs {
		names := make([]string, 0, len(rr.Cameras))
		for n := range rr.Cameras {
			names = append(names, n)
		}
		sort.Strings(names)
		slope := "-"
		if rr.RSSSlope != nil {
			slope = fmt.Sprintf("%+.2f", *rr.RSSSlope)
		}
		for i, n := range names {
			c := rr.Cameras[n]
			if i == 0 {
				fmt.Fprintf(tw, "%d\t%s\t%.0fs\t%s %s\t%v\t", rr.N, rr.RunID, rr.End.Sub(rr.Start).Seconds(), rr.Ending, rr.Exit, rr.FinalStats)
			} else {
				fmt.Fprint(tw, "\t\t\t\t\t")
			}
			drops := ""
			if i == 0 {
				drops = fmt.Sprint(rr.SpoolDropped)
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", n, c.Produced, c.Unique, c.Duplicates, c.OutOfOrder, c.Missing,
				c.Dropped+c.Skipped, drops, map[bool]string{true: slope, false: ""}[i == 0])
		}
	}
	tw.Flush()

	fmt.Fprintln(w, "\nchecks:")
	tw = tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	for _, c := range r.Checks {
		mark := "ok"
		if !c.Pass {
			mark = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\ttarget %s\tgot %s\n", mark, c.Name, c.Target, c.Value)
	}
	tw.Flush()
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "\nsoak: %s\n", verdict)
}
