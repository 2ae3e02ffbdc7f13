// Command soak (make soak) runs the real bin/gnld for SOAK_MINUTES on two
// cameras, a looping folder of MTD images and a live MJPEG stream that
// ffmpeg serves on loopback, publishing to a real mosquitto, while a fault
// injector on a seeded schedule kills and restarts the broker, stops and
// restarts the stream server, holds the broker away until gnld's spool
// overflows, reloads gnld (SIGHUP), stops and restarts it (SIGTERM, then a
// new process, as systemd's Restart= would) and starves the CPU.
//
// A subscriber with a persistent session (QoS 1) receives every result and
// stats message. At the end the soak checks, against gnld's own counters
// (the stats topic), that every result gnld produced arrived or was
// reported dropped by a full spool, and prints and writes
// (out/soak/report.json) the figures listed in docs/SOAK.md. It exits 1
// when a target is missed.
//
// Environment: SOAK_MINUTES (default 10), SOAK_SEED (default 1), SOAK_OUT
// (default out/soak), MTD (default ../shared/data/mtd).
package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"
)

// The soak's fixed settings; the report repeats them.
const (
	dirFPS        = 3.0 // GNLD_CAMERA_LINE1_FPS: the folder camera
	streamFPS     = 2   // frames per second ffmpeg serves to the stream camera
	streamFPSCap  = 3.0 // GNLD_CAMERA_LINE2_FPS: above the stream's rate, a cap only
	spoolMax      = 300 // GNLD_SPOOL_MAX: 60 s of both cameras
	statsInterval = 10 * time.Second

	// Faults per hour (at least one of each in any soak).
	brokerPerHour  = 24
	streamPerHour  = 8
	restartPerHour = 3
	hupPerHour     = 6
	starvePerHour  = 4

	warmUp   = 45 * time.Second // no faults at the start ...
	coolDown = 45 * time.Second // ... nor at the end
	// memWarmUp: RSS samples of each gnld run younger than this are left
	// out of the slopes (allocator and model caches settling).
	memWarmUp = 90 * time.Second
)

// Targets (issue 11).
const (
	maxMedianBrokerReconnect = 2 * time.Second
	minBrokerPerHour         = 20
	minStreamPerHour         = 5
)

type options struct {
	minutes float64
	seed    uint64
	out     string
	mtd     string
	bundle  string
	gnld    string
}

func main() {
	// go run ./tools/soak -recompute REPORT.json: the memory figures of a
	// report again, from its samples.
	if len(os.Args) == 3 && os.Args[1] == "-recompute" {
		if err := recompute(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			os.Exit(2)
		}
		return
	}
	opt, err := readOptions()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	rep, err := soak(context.Background(), opt)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if !rep.Pass {
		os.Exit(1)
	}
}

func readOptions() (options, error) {
	o := options{minutes: 10, seed: 1, out: "out/soak", mtd: "../shared/data/mtd", bundle: "models/default", gnld: "bin/gnld"}
	if v := os.Getenv("SOAK_MINUTES"); v != "" {
		m, err := strconv.ParseFloat(v, 64)
		if err != nil || m < 3 {
			return o, fmt.Errorf("SOAK_MINUTES=%q: expected a number of minutes, 3 or more", v)
		}
		o.minutes = m
	}
	if v := os.Getenv("SOAK_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return o, fmt.Errorf("SOAK_SEED=%q: expected a whole number", v)
		}
		o.seed = s
	}
	if v := os.Getenv("SOAK_OUT"); v != "" {
		o.out = v
	}
	if v := os.Getenv("MTD"); v != "" {
		o.mtd = v
	}
	if _, err := os.Stat(filepath.Join(o.bundle, "model.json")); err != nil {
		o.bundle = "models/testdata/tiny"
	}
	if _, err := os.Stat(o.gnld); err != nil {
		return o, fmt.Errorf("%s: %w (make soak builds it)", o.gnld, err)
	}
	if _, err := os.Stat(filepath.Join(o.mtd, "test", "good")); err != nil {
		return o, fmt.Errorf("no MTD data at %s (set MTD): %w", o.mtd, err)
	}
	return o, nil
}

// Fault kinds.
const (
	faultBroker  = "broker"      // SIGKILL mosquitto, start it again after Dur
	faultFill    = "broker-fill" // SIGKILL mosquitto until gnld's spool overflows
	faultStream  = "stream"      // stop the stream server, start it again after Dur
	faultRestart = "restart"     // SIGTERM gnld, start a new gnld 1 s after it exits
	faultHUP     = "sighup"      // SIGHUP gnld: reload the model
	faultStarve  = "cpu-starve"  // busy goroutines (2 per core) for Dur
)

// fault is one planned fault; At is from the start of the soak.
type fault struct {
	At   time.Duration `json:"at_s"`
	Kind string        `json:"kind"`
	Dur  time.Duration `json:"duration_s"`
}

// schedule plans the faults: each kind on its own lane, the lane's span
// cut into equal slots and one fault at a seeded random place in each, so
// faults of one lane never overlap while different lanes do.
func schedule(seed uint64, total time.Duration) [][]fault {
	rng := rand.New(rand.NewPCG(seed, 0x50a4))
	from, to := warmUp, total-coolDown
	hours := total.Hours()
	count := func(perHour float64) int { return max(1, int(math.Ceil(perHour*hours))) }
	spread := func(n int, kinds []string, dmin, dmax time.Duration) []fault {
		slot := (to - from) / time.Duration(n)
		var out []fault
		for i := range n {
			hi := min(dmax, slot*6/10)
			d := dmin
			if hi > dmin {
				d += time.Duration(rng.Int64N(int64(hi - dmin)))
			}
			room := slot - d
			at := from + time.Duration(i)*slot + time.Duration(rng.Int64N(int64(max(room, 1))))
			out = append(out, fault{At: at.Round(time.Second), Kind: kinds[i], Dur: d.Round(time.Second)})
		}
		return out
	}
	same := func(n int, k string) []string {
		s := make([]string, n)
		for i := range s {
			s[i] = k
		}
		return s
	}
	nb := max(2, count(brokerPerHour))
	bk := same(nb, faultBroker)
	bk[1+rng.IntN(nb-1)] = faultFill // not the first: let the spool see normal outages first
	broker := spread(nb, bk, 3*time.Second, 30*time.Second)
	stream := spread(count(streamPerHour), same(count(streamPerHour), faultStream), 5*time.Second, 30*time.Second)
	nr, nh := count(restartPerHour), count(hupPerHour)
	gk := append(same(nr, faultRestart), same(nh, faultHUP)...)
	rng.Shuffle(len(gk), func(i, j int) { gk[i], gk[j] = gk[j], gk[i] })
	gnld := spread(nr+nh, gk, 0, 0)
	cpu := spread(count(starvePerHour), same(count(starvePerHour), faultStarve), 10*time.Second, 20*time.Second)
	return [][]fault{broker, stream, gnld, cpu}
}

// done is one fault as it happened.
type done struct {
	fault
	Start time.Time `json:"start"`
	End   time.Time `json:"end"` // the broker or stream is back; the new gnld started
	Note  string    `json:"note,omitempty"`
}

// injector runs the lanes of faults against the soak's processes.
type injector struct {
	t0   time.Time
	env  *env
	mu   sync.Mutex
	log  []done
	hold sync.Mutex // held during a broker outage and a gnld restart: gnld is restarted only while the broker is up, so the run's final stats arrive
}

func (in *injector) record(d done) {
	in.mu.Lock()
	in.log = append(in.log, d)
	in.mu.Unlock()
	say("fault %-11s at %6.0fs  %5.1fs  %s", d.Kind, d.Start.Sub(in.t0).Seconds(), d.End.Sub(d.Start).Seconds(), d.Note)
}

func (in *injector) runLane(ctx context.Context, lane []fault) {
	for _, f := range lane {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(in.t0.Add(f.At))):
		}
		in.inject(ctx, f)
	}
}

func (in *injector) inject(ctx context.Context, f fault) {
	e := in.env
	d := done{fault: f, Start: time.Now()}
	switch f.Kind {
	case faultBroker, faultFill:
		in.hold.Lock()
		defer in.hold.Unlock()
		d.Start = time.Now()
		e.broker.kill()
		if f.Kind == faultBroker {
			sleep(ctx, f.Dur)
		} else {
			d.Note = in.fill(ctx)
		}
		up, err := e.broker.start()
		if err != nil {
			d.Note = "broker did not start: " + err.Error()
		}
		d.End = up
	case faultStream:
		e.stream.setUp(false)
		sleep(ctx, f.Dur)
		d.End = e.stream.setUp(true)
	case faultRestart:
		in.hold.Lock()
		defer in.hold.Unlock()
		d.Start = time.Now()
		d.Note = e.gnld.restart()
		d.End = time.Now()
	case faultHUP:
		d.Note = e.gnld.signalHUP()
		d.End = d.Start
	case faultStarve:
		starve(ctx, f.Dur)
		d.End = time.Now()
	}
	in.record(d)
}

// fill keeps the broker away until gnld reports spool drops (the spool is
// at its bound and dropping its oldest), then a few seconds more; at most
// 4 minutes.
func (in *injector) fill(ctx context.Context) string {
	start := time.Now()
	base, ok := in.env.gnld.metric("gnld_spool_dropped_total")
	var firstDrop time.Time
	for time.Since(start) < 4*time.Minute && ctx.Err() == nil {
		sleep(ctx, time.Second)
		v, ok2 := in.env.gnld.metric("gnld_spool_dropped_total")
		if ok && ok2 && v > base && firstDrop.IsZero() {
			firstDrop = time.Now()
		}
		if !firstDrop.IsZero() && time.Since(firstDrop) >= 5*time.Second {
			return fmt.Sprintf("spool full after %.0fs; %.0f dropped while the broker was away", firstDrop.Sub(start).Seconds(), v-base)
		}
	}
	return "spool did not overflow within 4 minutes"
}

// starve runs 2 busy goroutines per core for d, at gnld's niceness.
func starve(ctx context.Context, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for range 2 * numCPU() {
		wg.Go(func() {
			x := 1.0
			for ctx.Err() == nil {
				for range 100000 {
					x = math.Sqrt(x + 1)
				}
			}
			_ = x
		})
	}
	wg.Wait()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soak %s: %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// soak runs the whole thing and returns the report (also written as
// JSON and printed).
func soak(ctx context.Context, opt options) (*report, error) {
	total := time.Duration(opt.minutes * float64(time.Minute))
	lanes := schedule(opt.seed, total)
	var plan []fault
	for _, l := range lanes {
		plan = append(plan, l...)
	}
	sort.Slice(plan, func(i, j int) bool { return plan[i].At < plan[j].At })
	say("%.0f minutes, seed %d, %d faults planned (out: %s):", opt.minutes, opt.seed, len(plan), opt.out)
	for _, f := range plan {
		say("  plan %6.0fs %-11s %4.0fs", f.At.Seconds(), f.Kind, f.Dur.Seconds())
	}
	if err := os.MkdirAll(opt.out, 0o755); err != nil {
		return nil, err
	}
	e, err := setup(ctx, opt)
	if err != nil {
		return nil, err
	}
	defer e.close()

	in := &injector{t0: time.Now(), env: e}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	samplerDone := make(chan struct{})
	go func() { e.sample(ctx, 5*time.Second); close(samplerDone) }()
	var wg sync.WaitGroup
	for _, l := range lanes {
		wg.Go(func() { in.runLane(ctx, l) })
	}
	wg.Wait() // lanes end after their last fault (a spool fill may run past the plan)
	// Everything up until the planned end, and at least coolDown/3 after
	// a lane that ran late (a spool fill).
	rest := max(time.Until(in.t0.Add(total)), coolDown/3)
	say("faults done; %s with everything up", rest.Round(time.Second))
	sleep(ctx, rest)
	end := time.Now()
	say("stopping gnld (SIGTERM) for its final stats")
	e.gnld.stop()
	sleep(ctx, 3*time.Second) // the last messages reach the subscriber
	cancel()
	<-samplerDone
	rep := e.report(opt, plan, in.log, in.t0, end)
	if err := rep.write(filepath.Join(opt.out, "report.json")); err != nil {
		return nil, err
	}
	rep.print(os.Stdout)
	return rep, nil
}
