package packaging

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gnld/internal/testbroker"
)

// A real systemd as PID 1 of its own PID, mount and cgroup namespaces, on
// an overlay of this system with the package installed: enough to start
// the installed unit, reload it and watch its watchdog trip. It shares the
// test's network (the broker and the HTTP port are on 127.0.0.1), but not
// its /dev: it gets null, zero, random and friends only, so no getty
// touches a real terminal.

// bootEnv names the overlay folder for the child that becomes PID 1.
const bootEnv = "GNLD_DEBTEST_BOOT"

// boot runs in the child: PID 1 of a new PID namespace, in its own mount
// and cgroup namespaces. It mounts the overlay and a container's /dev,
// /proc, /sys and /run, then becomes systemd.
func boot(dir string) int {
	merged := filepath.Join(dir, "merged")
	must := func(err error, what string) {
		if err != nil {
			fmt.Fprintf(os.Stderr, "boot: %s: %v\n", what, err)
			os.Exit(2)
		}
	}
	mountOverlay(dir, must)
	dev := merged + "/dev"
	must(syscall.Mount("tmpfs", dev, "tmpfs", syscall.MS_NOSUID, "mode=0755"), "mount /dev")
	for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		must(os.WriteFile(dev+"/"+n, nil, 0o666), "create /dev/"+n)
		must(syscall.Mount("/dev/"+n, dev+"/"+n, "", syscall.MS_BIND, ""), "bind /dev/"+n)
	}
	// systemd's console: a file the test reads when something fails.
	must(os.WriteFile(dev+"/console", nil, 0o600), "create /dev/console")
	must(syscall.Mount(filepath.Join(dir, "console.log"), dev+"/console", "", syscall.MS_BIND, ""), "bind /dev/console")
	os.MkdirAll(dev+"/pts", 0o755)
	must(syscall.Mount("devpts", dev+"/pts", "devpts", 0, "newinstance,ptmxmode=0666,mode=0620"), "mount /dev/pts")
	must(os.Symlink("pts/ptmx", dev+"/ptmx"), "/dev/ptmx")
	os.MkdirAll(dev+"/shm", 0o1777)
	must(syscall.Mount("tmpfs", dev+"/shm", "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=1777"), "mount /dev/shm")
	must(syscall.Mount("proc", merged+"/proc", "proc", 0, ""), "mount /proc")
	must(syscall.Mount("/sys", merged+"/sys", "", syscall.MS_BIND|syscall.MS_REC, ""), "bind /sys")
	// The cgroup namespace's own cgroup2 tree: systemd manages only that.
	must(syscall.Mount("cgroup2", merged+"/sys/fs/cgroup", "cgroup2", 0, ""), "mount cgroup2")
	must(syscall.Mount("tmpfs", merged+"/run", "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"), "mount /run")
	must(syscall.Chroot(merged), "chroot")
	must(os.Chdir("/"), "chdir")
	err := syscall.Exec("/usr/lib/systemd/systemd", []string{"/usr/lib/systemd/systemd", "--unit=basic.target", "--log-target=journal"},
		[]string{"container=gnld-debtest", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"})
	must(err, "exec systemd")
	return 2
}

// system is a booted systemd.
type system struct {
	t   *testing.T
	pid int // PID 1 of the namespace, as this test sees it
	dir string
}

// bootSystem boots systemd on the overlay in dir and waits until it has
// finished starting.
func bootSystem(t *testing.T, dir string) *system {
	cg2 := ""
	if info, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for l := range strings.Lines(string(info)) {
			if f := strings.Fields(l); len(f) > 8 && strings.Contains(l, " - cgroup2 ") {
				cg2 = f[4]
			}
		}
	}
	if cg2 == "" {
		t.Fatal("no cgroup2 file system mounted: systemd cannot run here")
	}
	// A cgroup of its own, so that systemd's cgroups stay below it and go
	// with it.
	cg := filepath.Join(cg2, fmt.Sprintf("gnld-debtest-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	// systemd writes to /dev/console or, in a container, to its stdout:
	// both end in console.log.
	console, err := os.OpenFile(filepath.Join(dir, "console.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	cmd := exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec unshare --pid --fork --mount --cgroup --propagation unchanged "$1" -test.run='^$'`, cg, os.Args[0])
	cmd.Env = append(os.Environ(), bootEnv+"="+dir)
	cmd.Stdout, cmd.Stderr = console, console
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &system{t: t, dir: dir}
	t.Cleanup(func() {
		if s.pid > 0 {
			syscall.Kill(s.pid, syscall.SIGKILL) // the whole namespace goes with it
		}
		cmd.Process.Kill()
		cmd.Wait()
		removeCgroups(cg)
	})
	for deadline := time.Now().Add(10 * time.Second); s.pid == 0; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			s.pid, _ = strconv.Atoi(f[0])
		}
		if time.Now().After(deadline) {
			t.Fatalf("no PID 1 in the namespace: %s", s.console())
		}
	}
	// is-system-running --wait returns once start-up is over.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		state, _ := s.run(ctx, "systemctl", "is-system-running", "--wait")
		state = strings.TrimSpace(state)
		if state == "running" || state == "degraded" {
			if state == "degraded" {
				failed, _ := s.run(ctx, "systemctl", "--failed", "--no-legend")
				t.Logf("systemd up, degraded (units that cannot run in this container): %s", failed)
			}
			return s
		}
		if ctx.Err() != nil {
			t.Fatalf("systemd did not finish booting: %q\n%s", state, s.console())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// run runs a command inside the booted system and returns its output.
func (s *system) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--target", strconv.Itoa(s.pid), "--mount", "--pid", "--root", "--wd", "--"}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs a command inside and fails the test if it fails.
func (s *system) must(args ...string) string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := s.run(ctx, args...)
	if err != nil {
		s.t.Fatalf("%v: %v\n%s\njournal:\n%s", args, err, out, s.journal())
	}
	return out
}

// show returns a unit's properties.
func (s *system) show(unit string, props ...string) map[string]string {
	args := []string{"systemctl", "show", unit}
	for _, p := range props {
		args = append(args, "-p", p)
	}
	m := map[string]string{}
	for l := range strings.Lines(s.must(args...)) {
		k, v, _ := strings.Cut(strings.TrimSpace(l), "=")
		m[k] = v
	}
	return m
}

func (s *system) journal() string {
	out, _ := s.run(context.Background(), "journalctl", "--no-pager", "-o", "short-monotonic", "-u", "gnld")
	return out
}

func (s *system) console() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "console.log"))
	return string(b)
}

// removeCgroups removes cg and the cgroups below it, deepest first.
func removeCgroups(cg string) {
	var dirs []string
	filepath.WalkDir(cg, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		for try := 0; try < 50 && syscall.Rmdir(dirs[i]) == syscall.EBUSY; try++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// underSystemd boots systemd on the overlay where the package is
// installed and runs the installed unit as a technician would: start
// (Type=notify: start returns once gnld said READY=1), results on the
// broker, /readyz, STATUS, reload (SIGHUP), a hung gnld restarted by the
// watchdog, stop. A drop-in shortens WatchdogSec and RestartSec so the
// test does not wait 30 s; everything else is the shipped unit.
func underSystemd(t *testing.T, dir string, imgs []string) {
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	httpPort := testbroker.FreePort(t)
	upper := filepath.Join(dir, "upper")
	os.MkdirAll(filepath.Join(upper, "srv/gnld-test"), 0o755)
	for _, src := range imgs {
		data, _ := os.ReadFile(src)
		os.WriteFile(filepath.Join(upper, "srv/gnld-test", filepath.Base(src)), data, 0o644)
	}
	env := fmt.Sprintf("GNLD_CAMERAS=bench=dir:/srv/gnld-test\nGNLD_CAMERA_BENCH_LOOP=true\nGNLD_CAMERA_BENCH_FPS=5\n"+
		"GNLD_SITE=test\nGNLD_DEVICE=dev\nGNLD_MQTT_BROKER=%s\nGNLD_HTTP_ADDR=:%d\n", b.URL(), httpPort)
	if err := os.WriteFile(filepath.Join(upper, "etc/gnld/gnld.env"), []byte(env), 0o640); err != nil {
		t.Fatal(err)
	}
	const watchdog = 6 * time.Second
	os.MkdirAll(filepath.Join(upper, "etc/systemd/system/gnld.service.d"), 0o755)
	os.WriteFile(filepath.Join(upper, "etc/systemd/system/gnld.service.d/test.conf"),
		[]byte(fmt.Sprintf("[Service]\nWatchdogSec=%s\nRestartSec=1s\n", watchdog)), 0o644)

	s := bootSystem(t, dir)
	start := time.Now()
	s.must("systemctl", "start", "gnld")
	t.Logf("systemctl start gnld returned after %s", time.Since(start).Round(time.Millisecond))
	p := s.show("gnld", "ActiveState", "SubState", "Type", "NotifyAccess", "StatusText", "WatchdogUSec", "MainPID", "User", "NRestarts")
	if p["ActiveState"] != "active" || p["SubState"] != "running" || p["Type"] != "notify" || p["NotifyAccess"] != "main" ||
		!regexp.MustCompile(`^bench: .*; mqtt connected, spool \d+$`).MatchString(p["StatusText"]) ||
		p["WatchdogUSec"] != "6s" || p["User"] != "gnld" {
		t.Errorf("after start: %v\njournal:\n%s", p, s.journal())
	}
	if uid := s.must("stat", "-c", "%U", "/proc/"+p["MainPID"]); strings.TrimSpace(uid) != "gnld" {
		t.Errorf("gnld runs as %q, want gnld", uid)
	}
	sub.WaitFor(t, 15*time.Second, "results from the service", func([]testbroker.Msg) bool { return len(sub.On("/bench/result")) >= 3 })
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ready\n" {
		t.Errorf("/readyz of the service: %d %q", resp.StatusCode, body)
	}

	// Reload: SIGHUP through ExecReload; gnld stays up, same process.
	s.must("systemctl", "reload", "gnld")
	waitJournal(t, s, "model: SIGHUP, reloading")
	// RELOADING=1 holds the unit in "reloading" until gnld has loaded and
	// checked the bundle and sent READY=1: wait for that, then compare.
	rq := s.show("gnld", "ActiveState", "MainPID", "NRestarts")
	for deadline := time.Now().Add(30 * time.Second); rq["ActiveState"] == "reloading" && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		rq = s.show("gnld", "ActiveState", "MainPID", "NRestarts")
	}
	if rq["ActiveState"] != "active" || rq["MainPID"] != p["MainPID"] || rq["NRestarts"] != "0" {
		t.Errorf("after reload: %v, want the same process, active", rq)
	}

	// A hung gnld (stopped: no keep-alives) is killed by the watchdog
	// (SIGABRT: stacks in the journal) and restarted.
	s.must("kill", "-STOP", p["MainPID"])
	stopped := time.Now()
	var q map[string]string
	for deadline := time.Now().Add(watchdog + 40*time.Second); ; time.Sleep(100 * time.Millisecond) {
		q = s.show("gnld", "ActiveState", "SubState", "MainPID", "NRestarts")
		if q["NRestarts"] == "1" && q["ActiveState"] == "active" && q["SubState"] == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not restarted by the watchdog: %v\n%s", q, s.journal())
		}
	}
	t.Logf("hung at +0; restarted and READY again %s later (WatchdogSec=%s, RestartSec=1s)", time.Since(stopped).Round(100*time.Millisecond), watchdog)
	j := s.journal()
	for _, want := range []string{"gnld.service: Watchdog timeout (limit 6s)!", "SIGABRT: abort", "goroutine ", "gnld.service: Failed with result 'watchdog'."} {
		if !strings.Contains(j, want) {
			t.Errorf("journal lacks %q:\n%s", want, j)
		}
	}
	n := len(sub.On("/bench/result"))
	sub.WaitFor(t, 15*time.Second, "results after the restart", func([]testbroker.Msg) bool { return len(sub.On("/bench/result")) > n+2 })

	// Stop: gnld exits 0 (systemd still remembers the watchdog failure
	// in Result), "offline" is the last status message.
	s.must("systemctl", "stop", "gnld")
	if q := s.show("gnld", "ActiveState", "ExecMainCode", "ExecMainStatus"); q["ActiveState"] == "active" || q["ExecMainCode"] != "1" || q["ExecMainStatus"] != "0" {
		t.Errorf("after stop: %v, want exited with status 0\n%s", q, s.journal())
	}
	waitJournal(t, s, "gnld: stopped")
	st := sub.On("/dev/status")
	if len(st) == 0 || string(st[len(st)-1].Payload) != "offline" {
		t.Errorf("last status message is not offline")
	}
}

// waitJournal waits until gnld's journal holds want.
func waitJournal(t *testing.T, s *system, want string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(s.journal(), want); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("journal lacks %q:\n%s", want, s.journal())
		}
	}
}
