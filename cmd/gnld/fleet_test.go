package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"gnld/internal/testbroker"
	"gnld/publish"
)

// resultKey names one result. Devices share camera names and topics
// (gnl/<site>/<camera>/result), so the run is part of it.
type resultKey struct {
	run, camera string
	seq         uint64
}

// fleetConsumer is one instance of a central application on a shared
// subscription: it counts every delivery of every result.
type fleetConsumer struct {
	name string

	mu         sync.Mutex
	got        map[resultKey]int
	last       map[resultKey]time.Time // the latest delivery of each
	deliveries int
	unreadable int
	connects   int
}

// startFleetConsumer connects a consumer to the centre with a persistent
// session and subscribes to filter at QoS 1 on every connection, as a
// central application written with paho should.
func startFleetConsumer(t *testing.T, b *testbroker.Broker, files testbroker.TLSFiles, name, filter string) *fleetConsumer {
	c := &fleetConsumer{name: name, got: map[resultKey]int{}, last: map[resultKey]time.Time{}}
	handle := func(_ mqtt.Client, m mqtt.Message) {
		var r publish.Result
		err := json.Unmarshal(m.Payload(), &r)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.deliveries++
		if err != nil || r.RunID == "" || r.Sequence == 0 {
			c.unreadable++
			return
		}
		k := resultKey{r.RunID, r.Camera, r.Sequence}
		c.got[k]++
		c.last[k] = time.Now()
	}
	subscribed := make(chan error, 1)
	opts := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(name).SetTLSConfig(clientTLS(t, files)).
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(time.Second).
		SetConnectRetry(true).SetConnectRetryInterval(time.Second).SetOrderMatters(false).
		SetDefaultPublishHandler(handle).
		SetOnConnectHandler(func(cl mqtt.Client) {
			c.mu.Lock()
			c.connects++
			c.mu.Unlock()
			tok := cl.Subscribe(filter, 1, handle)
			tok.WaitTimeout(5 * time.Second)
			select {
			case subscribed <- tok.Error():
			default:
			}
		})
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s connect: %v", name, tok.Error())
	}
	select {
	case err := <-subscribed:
		if err != nil {
			t.Fatalf("%s subscribe: %v", name, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no subscription", name)
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	return c
}

// snapshot returns the deliveries per result so far.
func (c *fleetConsumer) snapshot() (got map[resultKey]int, deliveries, unreadable, connects int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	got = make(map[resultKey]int, len(c.got))
	for k, v := range c.got {
		got[k] = v
	}
	return got, c.deliveries, c.unreadable, c.connects
}

// lastAt is when the consumer last received k (zero: never).
func (c *fleetConsumer) lastAt(k resultKey) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last[k]
}

// fleetStats is the part of gnld's stats message the fleet test reads.
type fleetStats struct {
	Device  string                 `json:"device"`
	Uptime  float64                `json:"uptime_s"`
	MQTT    publish.Stats          `json:"mqtt"`
	Cameras map[string]cameraStats `json:"cameras"`
}

// fleetDevice is one gnld process of the fleet.
type fleetDevice struct {
	name, site string
	logPath    string
	cmd        *exec.Cmd
	done       chan struct{}
	err        error // cmd.Wait's, once done is closed

	// From its log (GNLD_LOG_FORMAT=json).
	runID     string
	published int64 // "mqtt: stopped": results the site broker acknowledged; -1: not logged
	warns     int
	errs      []string
	// Its last stats message (sent after the spool is empty, before "offline").
	stats *fleetStats
}

// readLog reads the device's JSON log: its run, the publisher's final
// count, warnings and errors.
func (d *fleetDevice) readLog(t *testing.T) {
	f, err := os.Open(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d.published, d.warns, d.errs = -1, 0, nil
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Level     string `json:"level"`
			Msg       string `json:"msg"`
			RunID     string `json:"run_id"`
			Device    string `json:"device"`
			Published *int64 `json:"published"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue // TFLite's own lines ("INFO: Created TensorFlow Lite XNNPACK delegate")
		}
		switch {
		case l.Msg == "gnld: starting":
			d.runID = l.RunID
			if l.Device != d.name {
				t.Errorf("%s: log says device %q", d.name, l.Device)
			}
		case l.Msg == "mqtt: stopped" && l.Published != nil:
			d.published = *l.Published
		}
		switch l.Level {
		case "WARN":
			d.warns++
		case "ERROR":
			d.errs = append(d.errs, sc.Text())
		}
	}
}

// logTail is the end of the device's log, for a failure message.
func (d *fleetDevice) logTail() string {
	b, _ := os.ReadFile(d.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// A fleet on one machine (make fleet; docs/FLEET.md): 20 gnld processes
// as 20 devices with 2 cameras each, 10 on each of two site brokers
// bridged over TLS to a central one by the shipped bridge configuration,
// two central consumers sharing one subscription. For
// GNLD_FLEET_MINUTES, results flow while site1's link to the centre is
// cut, site2's broker is restarted, the centre is restarted, and site1's
// link is cut again as every gnld is stopped (SIGTERM). Every result each
// gnld scored (its final stats: sequences 1..frames per camera) must reach
// the centre; deliveries beyond the first are counted and reported.
// GNLD_FLEET_FPS sets each camera's frame rate (default 2).
func TestFleet(t *testing.T) {
	minutes := os.Getenv("GNLD_FLEET_MINUTES")
	if minutes == "" {
		t.Skip("make fleet runs it (GNLD_FLEET_MINUTES)")
	}
	m, err := strconv.ParseFloat(minutes, 64)
	if err != nil || m <= 0 {
		t.Fatalf("GNLD_FLEET_MINUTES=%q: expected minutes above 0", minutes)
	}
	span := time.Duration(m * float64(time.Minute))
	fps := "2"
	if v := os.Getenv("GNLD_FLEET_FPS"); v != "" {
		fps = v
	}
	const devices, perSite, cameras = 20, 10, 2

	// Two folders of 8 images, looped at GNLD_FLEET_FPS (2 by default).
	dirA, _ := mtdSamples(t, 8, "good")
	dirB, _ := mtdSamples(t, 4, "good", "crack")
	bundle, err := filepath.Abs(tinyBundle)
	if err != nil {
		t.Fatal(err)
	}
	bin := buildGnld(t)

	centre, files := testbroker.StartTLS(t)
	type site struct {
		name   string
		broker *testbroker.Broker
		link   *cutProxy
		local  *testbroker.Subscriber // what its gnld published, on the site
	}
	var sites []*site
	for _, name := range []string{"site1", "site2"} {
		s := &site{name: name, link: newCutProxy(t, fmt.Sprintf("127.0.0.1:%d", centre.Port))}
		s.broker = testbroker.StartConf(t, siteBridgeConf(t, name, s.link, files))
		s.local = testbroker.Subscribe(t, s.broker, "gnl/"+name+"/#")
		sites = append(sites, s)
	}
	historian := []*fleetConsumer{
		startFleetConsumer(t, centre, files, "historian-1", "$share/historian/gnl/+/+/result"),
		startFleetConsumer(t, centre, files, "historian-2", "$share/historian/gnl/+/+/result"),
	}

	var devs []*fleetDevice
	logs := t.TempDir()
	for i := range devices {
		s := sites[i/perSite]
		d := &fleetDevice{name: fmt.Sprintf("dev%02d", i+1), site: s.name, done: make(chan struct{})}
		d.logPath = filepath.Join(logs, d.name+".log")
		env := map[string]string{
			"GNLD_SITE": s.name, "GNLD_DEVICE": d.name, "GNLD_MQTT_BROKER": s.broker.URL(),
			"GNLD_SPOOL_DIR": filepath.Join(t.TempDir(), "spool"), "GNLD_MODEL_DIR": bundle,
			"GNLD_CALIBRATION_DIR": filepath.Join(logs, "no-calibration"),
			"GNLD_CAMERAS":         "a=dir:" + dirA + ",b=dir:" + dirB,
			"GNLD_CAMERA_A_LOOP":   "true", "GNLD_CAMERA_B_LOOP": "true",
			"GNLD_CAMERA_A_FPS": fps, "GNLD_CAMERA_B_FPS": fps,
			"GNLD_THREADS": "1", "GNLD_EXIT_WHEN_DONE": "false",
			"GNLD_STATS_INTERVAL": "30s", "GNLD_SHUTDOWN_TIMEOUT": "60s", "GNLD_MQTT_RECONNECT_MAX": "2s",
			// info: the run_id of each device ("gnld: starting") and the
			// publisher's final count ("mqtt: stopped"); a few lines a run.
			"GNLD_LOG_LEVEL": "info", "GNLD_LOG_FORMAT": "json",
		}
		f, err := os.Create(d.logPath)
		if err != nil {
			t.Fatal(err)
		}
		d.cmd = exec.Command(bin)
		d.cmd.Env = environ(env)
		d.cmd.Stderr = f
		if err := d.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		go func() { d.err = d.cmd.Wait(); close(d.done) }()
		t.Cleanup(func() {
			select {
			case <-d.done:
			default:
				d.cmd.Process.Kill()
				<-d.done
			}
		})
		devs = append(devs, d)
	}

	// centreNow counts what the centre has: distinct results, and the
	// (run, camera) pairs among them.
	centreNow := func() (unique, pairs int) {
		seen := map[resultKey]bool{}
		pair := map[[2]string]bool{}
		for _, h := range historian {
			got, _, _, _ := h.snapshot()
			for k := range got {
				seen[k] = true
				pair[[2]string{k.run, k.camera}] = true
			}
		}
		return len(seen), len(pair)
	}
	atSite := func(s *site) int { return len(s.local.On("/result")) }
	aliveOrFail := func() {
		for _, d := range devs {
			select {
			case <-d.done:
				t.Fatalf("%s exited before its time: %v\n%s", d.name, d.err, d.logTail())
			default:
			}
		}
	}

	// Every device's cameras reach the centre.
	started := time.Now()
	for _, pairs := centreNow(); pairs < devices*cameras; _, pairs = centreNow() {
		aliveOrFail()
		if time.Since(started) > 2*time.Minute {
			t.Fatalf("after 2 min the centre has results of %d cameras of %d", pairs, devices*cameras)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t0 := time.Now()
	var timeline []string
	mark := func(what string) {
		line := fmt.Sprintf("t+%-7s %s", time.Since(t0).Round(time.Second), what)
		timeline = append(timeline, line)
		t.Log(line)
	}
	mark(fmt.Sprintf("results of all %d cameras at the centre (%s after the start)", devices*cameras, t0.Sub(started).Round(time.Second)))
	for _, d := range devs {
		d.readLog(t)
		if d.runID == "" {
			t.Fatalf("%s: no run_id in its log\n%s", d.name, d.logTail())
		}
	}

	progressEvery := min(30*time.Second, span/8)
	lastProgress := time.Now()
	progress := func() {
		u, _ := centreNow()
		load, _ := os.ReadFile("/proc/loadavg")
		t.Logf("t+%-7s at the sites %d + %d result messages, at the centre %d results; load %s",
			time.Since(t0).Round(time.Second), atSite(sites[0]), atSite(sites[1]), u, strings.Join(strings.Fields(string(load))[:3], " "))
		lastProgress = time.Now()
	}
	waitUntil := func(at time.Duration) {
		for left := at - time.Since(t0); left > 0; left = at - time.Since(t0) {
			aliveOrFail()
			time.Sleep(min(left, time.Second))
			if time.Since(lastProgress) >= progressEvery {
				progress()
			}
		}
	}
	frac := func(f float64) time.Duration { return time.Duration(f * float64(span)) }
	atLeast := func(d, floor time.Duration) time.Duration { return max(d, floor) }
	site1, site2 := sites[0], sites[1]

	// The schedule, in fractions of GNLD_FLEET_MINUTES.
	waitUntil(frac(0.10))
	cutSite := atSite(site1)
	site1.link.cut()
	mark("site1: link to the centre cut")
	waitUntil(frac(0.40))
	during := atSite(site1) - cutSite
	site1.link.restore()
	mark(fmt.Sprintf("site1: link restored (its gnld published %d results during the cut)", during))
	waitUntil(frac(0.50))
	site2.broker.Stop()
	mark("site2: broker stopped (SIGTERM; its gnld spool)")
	waitUntil(frac(0.50) + atLeast(frac(0.05), 5*time.Second))
	site2.broker.Restart()
	mark("site2: broker started again")
	waitUntil(frac(0.70))
	centre.Stop()
	mark("centre: broker stopped (both links and both consumers down)")
	waitUntil(frac(0.70) + atLeast(frac(0.03), 5*time.Second))
	centre.Restart()
	mark("centre: broker started again")
	waitUntil(frac(0.90))
	site1.link.cut()
	mark("site1: link to the centre cut again")
	waitUntil(span)
	progress()

	// Stop every gnld while site1's link is down: its last results wait in
	// the site broker's queue for the centre.
	for _, d := range devs {
		d.cmd.Process.Signal(syscall.SIGTERM)
	}
	mark("every gnld: SIGTERM")
	for _, d := range devs {
		select {
		case <-d.done:
		case <-time.After(2 * time.Minute):
			t.Fatalf("%s did not stop within 2 min of SIGTERM\n%s", d.name, d.logTail())
		}
	}
	mark("every gnld stopped")
	wall := time.Since(started)
	site1.link.restore()
	mark("site1: link restored")

	// Each device's "offline" comes after its final stats, which come
	// after its spool is empty.
	for _, s := range sites {
		deadline := time.Now().Add(time.Minute)
		for _, d := range devs {
			if d.site != s.name {
				continue
			}
			for {
				st := s.local.On("/" + d.name + "/status")
				if len(st) > 0 && string(st[len(st)-1].Payload) == "offline" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: no \"offline\" at %s within a minute of its exit\n%s", d.name, s.name, d.logTail())
				}
				time.Sleep(100 * time.Millisecond)
			}
			for _, msg := range s.local.On("/" + d.name + "/stats") {
				var st fleetStats
				if err := json.Unmarshal(msg.Payload, &st); err != nil {
					t.Fatalf("%s stats %q: %v", d.name, msg.Payload, err)
				}
				if d.stats == nil || st.Uptime > d.stats.Uptime {
					d.stats = &st
				}
			}
		}
	}

	// What each device published: per camera, sequences 1..frames.
	type want struct {
		dev    *fleetDevice
		camera string
		frames uint64
	}
	var wants []want
	byRun := map[string]*fleetDevice{}
	var total uint64
	for _, d := range devs {
		d.readLog(t)
		byRun[d.runID] = d
		if d.err != nil {
			t.Errorf("%s: exit %v\n%s", d.name, d.err, d.logTail())
		}
		if d.stats == nil {
			t.Fatalf("%s: no stats message at %s\n%s", d.name, d.site, d.logTail())
		}
		var sum uint64
		for _, cam := range []string{"a", "b"} {
			cs, ok := d.stats.Cameras[cam]
			if !ok || cs.Frames == 0 || cs.Processed != cs.Frames || cs.Dropped != 0 || cs.Skipped != 0 || cs.Bad != 0 {
				t.Errorf("%s camera %s: %+v; want frames > 0, each scored, none dropped, skipped or bad", d.name, cam, cs.Stats)
			}
			wants = append(wants, want{d, cam, cs.Frames})
			sum += cs.Frames
		}
		total += sum
		st := d.stats.MQTT
		if st.Published != sum || st.SpoolLen != 0 || st.SpoolDropped != 0 || d.published != int64(sum) {
			t.Errorf("%s: %d frames, publisher %+v, log's published %d; want every result published, spool empty, none dropped",
				d.name, sum, st, d.published)
		}
	}

	// The site: what each site broker's local subscriber saw.
	siteGot := map[resultKey]bool{}
	for _, s := range sites {
		for _, msg := range s.local.On("/result") {
			var r publish.Result
			if err := json.Unmarshal(msg.Payload, &r); err != nil {
				t.Fatalf("result %q at %s: %v", msg.Payload, s.name, err)
			}
			siteGot[resultKey{r.RunID, r.Camera, r.Sequence}] = true
		}
	}

	// The centre: wait until it has every result.
	type tally struct {
		unique, deliveries, lost, unexpected, unreadable int // deliveries: of readable results
		twiceSame, twiceBoth, repeated                   int
		repeats                                          []resultKey
		gots                                             []map[resultKey]int // per consumer
		lostAt                                           map[string]int      // device: results missing
		extra                                            map[string]int      // device: deliveries beyond the first
		atCentre                                         map[string]int      // device: distinct results
		per                                              []string
	}
	count := func() tally {
		var tl tally
		tl.lostAt, tl.extra, tl.atCentre = map[string]int{}, map[string]int{}, map[string]int{}
		var gots []map[resultKey]int
		all := map[resultKey]int{}
		for _, h := range historian {
			got, _, bad, conns := h.snapshot()
			gots = append(gots, got)
			tl.unreadable += bad
			n := 0
			for k, v := range got {
				all[k] += v
				n += v
			}
			tl.deliveries += n
			tl.per = append(tl.per, fmt.Sprintf("%s %d deliveries of %d results (%d connections)", h.name, n, len(got), conns))
		}
		tl.unique, tl.gots = len(all), gots
		for k, n := range all {
			d := byRun[k.run]
			if d == nil || k.seq > d.stats.Cameras[k.camera].Frames {
				tl.unexpected++
				continue
			}
			tl.atCentre[d.name]++
			if n > 1 {
				tl.repeats = append(tl.repeats, k)
				tl.repeated++
				tl.extra[d.name] += n - 1
			}
			if gots[0][k] > 1 || gots[1][k] > 1 {
				tl.twiceSame++
			}
			if gots[0][k] > 0 && gots[1][k] > 0 {
				tl.twiceBoth++
			}
		}
		for _, w := range wants {
			for seq := uint64(1); seq <= w.frames; seq++ {
				if all[resultKey{w.dev.runID, w.camera, seq}] == 0 {
					tl.lost++
					tl.lostAt[w.dev.name]++
				}
			}
		}
		return tl
	}
	var tl tally
	drainStart := time.Now()
	for tl = count(); tl.lost > 0 && time.Since(drainStart) < 5*time.Minute; tl = count() {
		if time.Since(lastProgress) >= 15*time.Second {
			t.Logf("waiting for the centre: %d of %d results missing", tl.lost, total)
			lastProgress = time.Now()
		}
		time.Sleep(time.Second)
	}
	mark(fmt.Sprintf("the centre has %d of %d results", int(total)-tl.lost, total))
	time.Sleep(5 * time.Second) // late repeats
	tl = count()

	// The summary.
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "device\tsite\trun\tframes a\tframes b\tpublished\tat site\tat centre\tlost\trepeats\tCPU s\tmax RSS MB\tlog warn/error\t")
	var cpu time.Duration
	var uptime float64 // camera-seconds
	var siteLost, maxRSS int
	for _, d := range devs {
		a, bb := d.stats.Cameras["a"].Frames, d.stats.Cameras["b"].Frames
		at := 0
		for _, cam := range []string{"a", "b"} {
			for seq := uint64(1); seq <= d.stats.Cameras[cam].Frames; seq++ {
				if siteGot[resultKey{d.runID, cam, seq}] {
					at++
				} else {
					siteLost++
				}
			}
		}
		uptime += d.stats.Uptime * cameras
		ps := d.cmd.ProcessState
		c := ps.UserTime() + ps.SystemTime()
		cpu += c
		rss := 0
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			rss = int(ru.Maxrss / 1024)
			maxRSS = max(maxRSS, rss)
		}
		fmt.Fprintf(w, "%s\t%s\t…%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f\t%d\t%d/%d\t\n", d.name, d.site, d.runID[len(d.runID)-8:],
			a, bb, d.stats.MQTT.Published, at, tl.atCentre[d.name], tl.lostAt[d.name], tl.extra[d.name], c.Seconds(), rss, d.warns, len(d.errs))
	}
	fmt.Fprintf(w, "all\t\t\t\t\t%d\t%d\t%d\t%d\t%d\t%.1f\t%d\t\t\n", total, int(total)-siteLost, tl.unique-tl.unexpected, tl.lost,
		tl.deliveries-tl.unique, cpu.Seconds(), maxRSS)
	w.Flush()
	t.Logf("a fleet on one machine: %d devices x %d cameras at %s fps (%.2f frames/s a camera, %.0f results/s in all), %s of results, 2 sites bridged to the centre (TLS)\n%s\n"+
		"results published %d; at the centre %d distinct in %d deliveries: %d lost, %d unexpected, %d unreadable;\n"+
		"repeats: %d deliveries beyond the first, of %d results (%d more than once to one consumer, %d to both consumers)\n"+
		"consumers: %s\n"+
		"at the sites' own subscribers: %d of %d results (%d missing)\n"+
		"gnld CPU: %.0f s in %s = %.2f cores for %d processes; max RSS %d MB\n"+
		"timeline:\n  %s",
		devices, cameras, fps, float64(total)/uptime, float64(total)/uptime*devices*cameras, span, b.String(),
		total, tl.unique, tl.deliveries, tl.lost, tl.unexpected, tl.unreadable,
		tl.deliveries-tl.unique, tl.repeated, tl.twiceSame, tl.twiceBoth,
		strings.Join(tl.per, "; "),
		int(total)-siteLost, total, siteLost,
		cpu.Seconds(), wall.Round(time.Second), cpu.Seconds()/wall.Seconds(), devices, maxRSS,
		strings.Join(timeline, "\n  "))
	slices.SortFunc(tl.repeats, func(a, b resultKey) int {
		return cmp.Or(cmp.Compare(byRun[a.run].name, byRun[b.run].name), cmp.Compare(a.camera, b.camera), cmp.Compare(a.seq, b.seq))
	})
	for i, k := range tl.repeats {
		if i == 20 {
			t.Logf("... %d more repeated results", len(tl.repeats)-i)
			break
		}
		var at []string
		for j, h := range historian {
			if n := tl.gots[j][k]; n > 0 {
				at = append(at, fmt.Sprintf("%s %dx (last t+%s)", h.name, n, h.lastAt(k).Sub(t0).Round(100*time.Millisecond)))
			}
		}
		t.Logf("repeated: %s camera %s sequence %d: %s", byRun[k.run].name, k.camera, k.seq, strings.Join(at, ", "))
	}
	for _, d := range devs {
		for _, e := range d.errs {
			t.Logf("%s error: %s", d.name, e)
		}
	}
	if tl.lost > 0 || tl.unexpected > 0 || tl.unreadable > 0 {
		t.Errorf("%d results lost at the centre (per device %v), %d unexpected, %d unreadable; want 0", tl.lost, tl.lostAt, tl.unexpected, tl.unreadable)
	}
	for i, h := range historian {
		if got, _, _, _ := h.snapshot(); len(got) == 0 {
			t.Errorf("%s received nothing: the shared subscription did not share", historian[i].name)
		}
	}
	if during == 0 {
		t.Errorf("site1 published nothing while its link was cut")
	}
	if tl.twiceBoth > 0 {
		t.Logf("note: %d results reached both consumers (the bridge's target is none)", tl.twiceBoth)
	}
}
