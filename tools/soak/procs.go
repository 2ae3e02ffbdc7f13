package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func numCPU() int { return runtime.NumCPU() }

// env is what the soak runs: broker, stream server, gnld and subscriber.
type env struct {
	dir    string // temporary: images, clip, spool, broker state
	broker *broker
	stream *stream
	gnld   *supervisor
	sub    *subscriber
	logs   []io.Closer
	// overrides are the caller's GNLD_* variables, given to gnld after
	// the soak's own.
	overrides []string
	samples   []sample
	smu       sync.Mutex
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (e *env) logFile(opt options, name string) (*os.File, error) {
	f, err := os.Create(filepath.Join(opt.out, name))
	if err == nil {
		e.logs = append(e.logs, f)
	}
	return f, err
}

// setup prepares the images and the clip, and starts the broker, the
// subscriber, the stream server and gnld.
func setup(ctx context.Context, opt options) (*env, error) {
	dir, err := os.MkdirTemp("", "gnld-soak-")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir}
	fail := func(err error) (*env, error) { e.close(); return nil, err }
	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return fail(err)
		}
	}
	images, clip, err := media(ctx, opt.mtd, dir)
	if err != nil {
		return fail(fmt.Errorf("preparing images: %w", err))
	}

	blog, err := e.logFile(opt, "mosquitto.log")
	if err != nil {
		return fail(err)
	}
	e.broker = &broker{dir: filepath.Join(dir, "broker"), port: ports[0], log: blog}
	if _, err := e.broker.start(); err != nil {
		return fail(err)
	}
	say("mosquitto on 127.0.0.1:%d (persistence on, killed with SIGKILL)", ports[0])
	if e.sub, err = subscribe(e.broker.url(), "gnl/soak/+/result", "gnl/soak/+/stats", "gnl/soak/+/status"); err != nil {
		return fail(err)
	}
	// The broker saves its state (and with it the subscriber's persistent
	// session) every autosave_interval: the first kill must find it saved.
	time.Sleep(6 * time.Second)

	flog, err := e.logFile(opt, "ffmpeg.log")
	if err != nil {
		return fail(err)
	}
	e.stream = &stream{clip: clip, port: ports[1], log: flog}
	go e.stream.run(ctx)
	e.stream.setUp(true)
	say("stream: ffmpeg MJPEG over HTTP on 127.0.0.1:%d, %d fps, 256x256, restarted after each client", ports[1], streamFPS)

	glog, err := e.logFile(opt, "gnld.log")
	if err != nil {
		return fail(err)
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[2])
	gnldEnv := []string{
		"GNLD_CAMERAS=line1,line2",
		"GNLD_CAMERA_LINE1_SOURCE=dir:" + images,
		"GNLD_CAMERA_LINE1_LOOP=true",
		"GNLD_CAMERA_LINE1_FPS=" + strconv.FormatFloat(dirFPS, 'g', -1, 64),
		fmt.Sprintf("GNLD_CAMERA_LINE2_SOURCE=http://127.0.0.1:%d/", ports[1]),
		"GNLD_CAMERA_LINE2_FPS=" + strconv.FormatFloat(streamFPSCap, 'g', -1, 64),
		"GNLD_MODEL_DIR=" + opt.bundle,
		"GNLD_MQTT_BROKER=" + e.broker.url(),
		"GNLD_MQTT_CLIENT_ID=gnld-soak",
		"GNLD_SITE=soak",
		"GNLD_DEVICE=soakdev",
		"GNLD_SPOOL_DIR=" + filepath.Join(dir, "spool"),
		"GNLD_SPOOL_MAX=" + strconv.Itoa(spoolMax),
		"GNLD_STATS_INTERVAL=" + statsInterval.String(),
		"GNLD_CALIBRATION_DIR=" + filepath.Join(dir, "calibration"),
		"GNLD_HTTP_ADDR=" + httpAddr,
		"GNLD_LOG_FORMAT=json",
	}
	// GNLD_* variables of the caller's override these (the last of a
	// duplicate key wins), to try other settings; the report lists them.
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "GNLD_") {
			gnldEnv = append(gnldEnv, kv)
			e.overrides = append(e.overrides, kv)
		}
	}
	e.gnld = &supervisor{bin: opt.gnld, env: gnldEnv, log: glog, httpAddr: httpAddr}
	say("gnld: %s", strings.Join(gnldEnv, " "))
	if err := e.gnld.start(); err != nil {
		return fail(err)
	}
	return e, nil
}

func (e *env) close() {
	if e.gnld != nil {
		e.gnld.kill()
	}
	if e.stream != nil {
		e.stream.setUp(false)
	}
	if e.sub != nil {
		e.sub.close()
	}
	if e.broker != nil {
		e.broker.kill()
	}
	for _, c := range e.logs {
		c.Close()
	}
	os.RemoveAll(e.dir)
}

// media copies MTD test images (good ones and four of each defect) into a
// folder for the folder camera, and makes a 256x256 MJPEG clip of 20 good
// images for the stream.
func media(ctx context.Context, mtd, dir string) (images, clip string, err error) {
	images = filepath.Join(dir, "images")
	seq := filepath.Join(dir, "seq")
	for _, d := range []string{images, seq} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", "", err
		}
	}
	classes, err := os.ReadDir(filepath.Join(mtd, "test"))
	if err != nil {
		return "", "", err
	}
	n := 0
	for _, c := range classes {
		if !c.IsDir() {
			continue
		}
		files, _ := filepath.Glob(filepath.Join(mtd, "test", c.Name(), "*.jpg"))
		sort.Strings(files)
		take := 4
		if c.Name() == "good" {
			take = 40
		}
		for i, f := range files[:min(take, len(files))] {
			b, err := os.ReadFile(f)
			if err != nil {
				return "", "", err
			}
			n++
			if err := os.WriteFile(filepath.Join(images, fmt.Sprintf("%03d-%s-%s", n, c.Name(), filepath.Base(f))), b, 0o644); err != nil {
				return "", "", err
			}
			if c.Name() == "good" && i < 20 {
				out := filepath.Join(seq, fmt.Sprintf("%03d.jpg", i+1))
				if b, err := exec.CommandContext(ctx, "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", f, "-vf", "scale=256:256", out).CombinedOutput(); err != nil {
					return "", "", fmt.Errorf("ffmpeg scale %s: %v: %s", f, err, b)
				}
			}
		}
	}
	clip = filepath.Join(dir, "clip.mkv")
	if b, err := exec.CommandContext(ctx, "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-framerate", strconv.Itoa(streamFPS),
		"-i", filepath.Join(seq, "%03d.jpg"), "-c:v", "mjpeg", "-q:v", "5", clip).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("ffmpeg clip: %v: %s", err, b)
	}
	say("media: %d MTD test images in the folder camera, a 20-image clip for the stream", n)
	return images, clip, nil
}

// ---- broker ----------------------------------------------------------------

// broker is mosquitto with persistence, so that the subscriber's
// persistent session survives a kill (from the last autosave, 5 s).
type broker struct {
	dir  string
	port int
	log  io.Writer
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (b *broker) url() string { return fmt.Sprintf("tcp://127.0.0.1:%d", b.port) }

// start runs mosquitto and returns when its port accepts connections.
func (b *broker) start() (time.Time, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return time.Time{}, err
	}
	conf := fmt.Sprintf("user root\nlistener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n"+
		"autosave_interval 5\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_timestamp_format %%Y-%%m-%%dT%%H:%%M:%%S\n", b.port, b.dir)
	path := filepath.Join(b.dir, "mosquitto.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return time.Time{}, err
	}
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto"
	}
	cmd := exec.Command(bin, "-c", path)
	cmd.Stdout, cmd.Stderr = b.log, b.log
	if err := cmd.Start(); err != nil {
		return time.Time{}, err
	}
	b.cmd, b.done = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(b.done)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", b.port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Now(), fmt.Errorf("mosquitto did not listen on %d: %v", b.port, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill ends mosquitto with SIGKILL (no chance to save or say goodbye).
func (b *broker) kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	b.cmd.Process.Kill()
	<-b.done
	b.cmd = nil
}

// ---- stream server ---------------------------------------------------------

// stream serves the clip as MJPEG over HTTP with ffmpeg's listen mode,
// which serves one client and ends: while the stream is up, run starts a
// new ffmpeg each time the last one ends.
type stream struct {
	clip string
	port int
	log  io.Writer

	mu       sync.Mutex
	up       bool
	cmd      *exec.Cmd
	Restarts int // ffmpeg processes started
}

func (s *stream) run(ctx context.Context) {
	for ctx.Err() == nil {
		s.mu.Lock()
		if !s.up {
			s.mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		cmd := exec.Command("ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", s.clip,
			"-c", "copy", "-f", "mpjpeg", "-listen", "1", fmt.Sprintf("http://127.0.0.1:%d/", s.port))
		cmd.Stdout, cmd.Stderr = s.log, s.log
		err := cmd.Start()
		if err == nil {
			s.cmd = cmd
			s.Restarts++
		}
		s.mu.Unlock()
		if err != nil {
			say("stream: ffmpeg: %v", err)
			time.Sleep(time.Second)
			continue
		}
		cmd.Wait()
		s.mu.Lock()
		s.cmd = nil
		s.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
	s.setUp(false)
}

// setUp starts (up) or stops the stream server and returns when.
func (s *stream) setUp(up bool) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.up = up
	if !up && s.cmd != nil {
		s.cmd.Process.Kill()
	}
	return time.Now()
}

// ---- gnld, supervised ------------------------------------------------------

// gnldRun is one gnld process.
type gnldRun struct {
	N         int       `json:"n"`
	RunID     string    `json:"run_id"`
	PID       int       `json:"pid"`
	Start     time.Time `json:"start"`
	StopAsked time.Time `json:"stop_asked,omitzero"`
	End       time.Time `json:"end,omitzero"`
	Exit      string    `json:"exit"`   // "0", "exit status 1", "signal: killed"
	Ending    string    `json:"ending"` // sigterm (restart, end of soak) or crash
	cmd       *exec.Cmd
	done      chan struct{}
}

// logLine is one of gnld's JSON log lines, the fields the soak reads.
type logLine struct {
	Time   time.Time `json:"time"`
	Level  string    `json:"level"`
	Msg    string    `json:"msg"`
	RunID  string    `json:"run_id"`
	Camera string    `json:"camera"`
	run    int
}

// supervisor starts gnld, restarts it after a crash as systemd's
// Restart=always would (1 s later), and keeps what its logs say.
type supervisor struct {
	bin      string
	env      []string
	log      io.Writer
	httpAddr string

	mu      sync.Mutex
	runs    []*gnldRun
	events  []logLine // the lines the report uses
	stopped bool      // no restart after an exit (end of soak)
	crashes int
}

// interesting are the log messages the report uses.
var interesting = map[string]bool{
	"gnld: starting": true, "mqtt: connection back": true, "mqtt: connected": true,
	"capture: source back": true, "spool: full, oldest results dropped": true,
	"model: camera switched": true, "spool: result lost": true,
}

func (s *supervisor) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startLocked()
}

func (s *supervisor) startLocked() error {
	cmd := exec.Command(s.bin)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, s.env...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = s.log
	if err := cmd.Start(); err != nil {
		return err
	}
	r := &gnldRun{N: len(s.runs) + 1, PID: cmd.Process.Pid, Start: time.Now(), cmd: cmd, done: make(chan struct{})}
	s.runs = append(s.runs, r)
	go s.readLog(r, pipe)
	go s.wait(r)
	return nil
}

func (s *supervisor) readLog(r *gnldRun, pipe io.Reader) {
	sc := bufio.NewScanner(pipe)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		s.mu.Lock()
		s.log.Write(append(line, '\n'))
		var l logLine
		if json.Unmarshal(line, &l) == nil && interesting[l.Msg] {
			l.run = r.N
			s.events = append(s.events, l)
			if l.Msg == "gnld: starting" {
				r.RunID = l.RunID
			}
		}
		s.mu.Unlock()
	}
}

func (s *supervisor) wait(r *gnldRun) {
	err := r.cmd.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	r.End = time.Now()
	r.Exit = "0"
	if err != nil {
		r.Exit = err.Error()
	}
	close(r.done)
	if !r.StopAsked.IsZero() {
		r.Ending = "sigterm"
		return
	}
	r.Ending = "crash"
	s.crashes++
	say("gnld run %d (pid %d) ended by itself: %s; restarting in 1 s", r.N, r.PID, r.Exit)
	if s.stopped {
		return
	}
	go func() {
		time.Sleep(time.Second)
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.stopped {
			if err := s.startLocked(); err != nil {
				say("gnld: restart failed: %v", err)
			}
		}
	}()
}

func (s *supervisor) current() *gnldRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.runs) == 0 {
		return nil
	}
	return s.runs[len(s.runs)-1]
}

// terminate sends SIGTERM to the current run and waits for it to end (at
// most 60 s, then SIGKILL). It returns the run and what happened.
func (s *supervisor) terminate() (*gnldRun, string) {
	r := s.current()
	if r == nil {
		return nil, "no gnld"
	}
	s.mu.Lock()
	r.StopAsked = time.Now()
	s.mu.Unlock()
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
		return r, "did not stop within 60 s after SIGTERM: killed"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return r, fmt.Sprintf("run %d stopped in %.1fs (%s)", r.N, r.End.Sub(r.StopAsked).Seconds(), r.Exit)
}

// restart is systemctl restart: SIGTERM, wait for the exit, start again
// (RestartSec=1).
func (s *supervisor) restart() string {
	_, note := s.terminate()
	time.Sleep(time.Second)
	if err := s.start(); err != nil {
		return note + "; new gnld failed to start: " + err.Error()
	}
	return note + fmt.Sprintf("; run %d started", s.current().N)
}

// stop ends gnld for good (end of the soak).
func (s *supervisor) stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	_, note := s.terminate()
	say("gnld: %s", note)
}

func (s *supervisor) kill() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	if r := s.current(); r != nil {
		select {
		case <-r.done:
		default:
			r.cmd.Process.Kill()
			<-r.done
		}
	}
}

func (s *supervisor) signalHUP() string {
	r := s.current()
	if r == nil {
		return "no gnld"
	}
	if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("run %d reloads its model", r.N)
}

// metrics reads gnld's /metrics: the value of each unlabelled sample.
func (s *supervisor) metrics() (map[string]float64, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + s.httpAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New(resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

func (s *supervisor) metric(name string) (float64, bool) {
	m, err := s.metrics()
	if err != nil {
		return 0, false
	}
	v, ok := m[name]
	return v, ok
}

// ---- memory and goroutine samples -----------------------------------------

// sample is one reading of the running gnld.
type sample struct {
	Run        int       `json:"run"`
	At         time.Time `json:"at"`
	Age        float64   `json:"age_s"` // since the run started
	RSSMB      float64   `json:"rss_mb"`
	Goroutines float64   `json:"goroutines"` // -1: /metrics did not answer
}

// sample reads VmRSS (/proc) and go_goroutines (/metrics) every period.
func (e *env) sample(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r := e.gnld.current()
		if r == nil {
			continue
		}
		select {
		case <-r.done:
			continue
		default:
		}
		rss, err := vmRSS(r.PID)
		if err != nil {
			continue
		}
		g := -1.0
		if v, ok := e.gnld.metric("go_goroutines"); ok {
			g = v
		}
		now := time.Now()
		e.smu.Lock()
		e.samples = append(e.samples, sample{Run: r.N, At: now, Age: now.Sub(r.Start).Seconds(), RSSMB: rss, Goroutines: g})
		e.smu.Unlock()
	}
}

// vmRSS is the resident set of pid in MB, from /proc/PID/status.
func vmRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseFloat(f[0], 64)
				return kb / 1024, err
			}
		}
	}
	return 0, errors.New("no VmRSS")
}
