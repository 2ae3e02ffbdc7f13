package packaging

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// The package is installed into an overlay of this very system (the build
// root under make test): the system stays untouched below, dpkg, the
// maintainer scripts and systemd's tools run for real on top. The test
// re-runs its own binary in a private mount namespace (unshare) to mount
// the overlay; overlayEnv names the overlay's folder for that child.
const overlayEnv = "GNLD_DEBTEST_OVERLAY"

func TestMain(m *testing.M) {
	if dir := os.Getenv(overlayEnv); dir != "" {
		os.Exit(inOverlay(dir, os.Getenv("GNLD_DEBTEST_SCRIPT")))
	}
	if dir := os.Getenv(bootEnv); dir != "" {
		os.Exit(boot(dir))
	}
	os.Exit(m.Run())
}

// mountOverlay mounts dir/upper over / at dir/merged. It runs in a child
// already in its own mount namespace; nothing it mounts may reach the
// parent's, so it first makes the mount that holds dir private ("/"
// cannot be, in a chroot).
func mountOverlay(dir string, must func(error, string)) {
	merged := filepath.Join(dir, "merged")
	os.MkdirAll(merged, 0o755)
	os.RemoveAll(filepath.Join(dir, "work"))
	os.MkdirAll(filepath.Join(dir, "work"), 0o755)
	mp := mountPoint(dir)
	must(syscall.Mount("", mp, "", syscall.MS_REC|syscall.MS_PRIVATE, ""), "make "+mp+" private")
	opts := fmt.Sprintf("lowerdir=/,upperdir=%s/upper,workdir=%s/work", dir, dir)
	must(syscall.Mount("overlay", merged, "overlay", 0, opts), "mount overlay "+opts)
}

// inOverlay mounts the overlay with /dev, /proc, /sys and /run, and runs
// script there under sh -e, chrooted.
func inOverlay(dir, script string) int {
	merged := filepath.Join(dir, "merged")
	must := func(err error, what string) {
		if err != nil {
			fmt.Fprintf(os.Stderr, "overlay: %s: %v\n", what, err)
			os.Exit(2)
		}
	}
	mountOverlay(dir, must)
	must(syscall.Mount("/dev", merged+"/dev", "", syscall.MS_BIND|syscall.MS_REC, ""), "bind /dev")
	must(syscall.Mount("/sys", merged+"/sys", "", syscall.MS_BIND|syscall.MS_REC, ""), "bind /sys")
	must(syscall.Mount("proc", merged+"/proc", "proc", 0, ""), "mount /proc")
	must(syscall.Mount("tmpfs", merged+"/run", "tmpfs", 0, "mode=0755"), "mount /run")
	cmd := exec.Command("chroot", merged, "/bin/sh", "-ec", script)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "overlay: script:", err)
		return 1
	}
	return 0
}

// mountPoint is the mount point that holds dir, from /proc/self/mountinfo.
func mountPoint(dir string) string {
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "/"
	}
	best := "/"
	for l := range strings.Lines(string(info)) {
		f := strings.Fields(l)
		if len(f) > 4 && (dir == f[4] || strings.HasPrefix(dir, strings.TrimSuffix(f[4], "/")+"/")) && len(f[4]) > len(best) {
			best = f[4]
		}
	}
	return best
}

// overlay runs script in the overlay whose changes live in dir/upper; it
// returns the combined output. Successive calls see earlier changes.
func overlay(t *testing.T, dir, script string) string {
	t.Helper()
	cmd := exec.Command("unshare", "--mount", "--propagation", "unchanged", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), overlayEnv+"="+dir, "GNLD_DEBTEST_SCRIPT="+script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in the overlay: %v\n--- script:\n%s\n--- output:\n%s", err, script, out)
	}
	return string(out)
}

// section returns the lines after "== name" up to the next "== ".
func section(out, name string) string {
	_, rest, ok := strings.Cut(out, "== "+name+"\n")
	if !ok {
		return ""
	}
	if i := strings.Index(rest, "\n== "); i >= 0 {
		rest = rest[:i+1]
	}
	return rest
}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %v: %v\n%s%s", name, args, err, out, stderr)
	}
	return strings.TrimSpace(string(out))
}

// neededPackages names the Debian package of each library the binary
// links directly (ELF NEEDED), found with ldconfig and dpkg -S: what the
// package's Depends must cover.
func neededPackages(t *testing.T, bin string) []string {
	var pkgs []string
	cache := run(t, ".", nil, "ldconfig", "-p")
	for _, m := range regexp.MustCompile(`\(NEEDED\)\s+Shared library: \[(.+)\]`).FindAllStringSubmatch(run(t, ".", nil, "readelf", "-d", bin), -1) {
		lib := m[1]
		if strings.HasPrefix(lib, "libtensorflowlite_delegates") {
			continue // the package's own library, in /usr/lib/gnld (tools/mkdeb)
		}
		path := ""
		for l := range strings.Lines(cache) {
			if strings.HasPrefix(strings.TrimSpace(l), lib+" (") {
				_, path, _ = strings.Cut(l, "=> ")
				path = strings.TrimSpace(path)
				break
			}
		}
		if path == "" {
			t.Fatalf("%s: library %s not in the ldconfig cache", bin, lib)
		}
		real, _ := filepath.EvalSymlinks(path)
		var owner string
		for _, p := range []string{path, real, strings.Replace(real, "/usr/lib/", "/lib/", 1)} {
			if out, err := exec.Command("dpkg", "-S", p).Output(); err == nil {
				owner, _, _ = strings.Cut(string(out), ":")
				break
			}
		}
		if owner == "" {
			t.Fatalf("%s: no package owns %s (%s)", bin, path, real)
		}
		if !slices.Contains(pkgs, owner) {
			pkgs = append(pkgs, owner)
		}
	}
	return pkgs
}

// make deb's package, installed with real dpkg: files, Depends, the gnld
// user, the env file's permissions, the unit (systemd-analyze verify,
// systemctl enable), the installed gnld scoring MTD images as the gnld
// user, the unit under a real systemd (start, reload, watchdog, stop), an
// upgrade that keeps an edited conffile, and a purge.
func TestDeb(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: installs the package into an overlay of this system (make test runs it as root in the build root)")
	}
	for _, tool := range []string{"dpkg-shlibdeps", "unshare", "systemd-analyze", "readelf"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: run in the build root (make test)", tool)
		}
	}
	root, _ := filepath.Abs("..")
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	run(t, root, nil, "go", "build", "-o", bin+"/", "./cmd/gnld", "./cmd/gnlctl")
	debs := filepath.Join(tmp, "upper", "tmp", "debs")
	deb1 := run(t, root, []string{"BIN=" + bin, "VERSION=1.0~test1"}, "tools/mkdeb", debs)
	deb2 := run(t, root, []string{"BIN=" + bin, "VERSION=1.0~test2"}, "tools/mkdeb", debs)
	arch := run(t, ".", nil, "dpkg", "--print-architecture")
	if filepath.Base(deb1) != "gnld_1.0~test1_"+arch+".deb" {
		t.Errorf("package file %s", deb1)
	}

	// The package as built.
	depends := run(t, ".", nil, "dpkg-deb", "--field", deb1, "Depends")
	t.Logf("Depends: %s", depends)
	for _, b := range []string{"gnld", "gnlctl"} {
		for _, p := range neededPackages(t, filepath.Join(bin, b)) {
			if !regexp.MustCompile(`(^|, )` + regexp.QuoteMeta(p) + `( \(|,|$)`).MatchString(depends) {
				t.Errorf("Depends lacks %s, which ships a library %s links", p, b)
			}
		}
	}
	for _, want := range []string{"libtensorflow-lite2.14.1", "libopencv-core410", "libc6 (>= ", "systemd | systemd-standalone-sysusers"} {
		if !strings.Contains(depends, want) {
			t.Errorf("Depends lacks %q", want)
		}
	}
	if c := run(t, ".", nil, "dpkg-deb", "--info", deb1, "conffiles"); c != "/etc/gnld/gnld.env" {
		t.Errorf("conffiles: %q", c)
	}
	contents := run(t, ".", nil, "dpkg-deb", "--contents", deb1)
	for _, want := range []string{"./usr/bin/gnld", "./usr/bin/gnlctl", "./usr/lib/systemd/system/gnld.service",
		"./usr/lib/sysusers.d/gnld.conf", "./usr/share/gnld/model/model.tflite", "./usr/share/gnld/model/model.json",
		"./etc/gnld/gnld.env", "./usr/share/doc/gnld/docs/CONFIG.md", "./usr/share/doc/gnld/docs/INSTALL.md",
		"./usr/share/doc/gnld/models/BUNDLE.md", "./usr/share/doc/gnld/README.md", "./usr/share/doc/gnld/copyright"} {
		if !regexp.MustCompile(`root/root .* ` + regexp.QuoteMeta(want) + `\n`).MatchString(contents + "\n") {
			t.Errorf("package lacks %s (owned by root)", want)
		}
	}

	// Install, then use what was installed.
	mtd := os.Getenv("MTD")
	if mtd == "" {
		mtd = filepath.Join(root, "../shared/data/mtd")
	}
	imgs, _ := filepath.Glob(filepath.Join(mtd, "test/good/*.jpg"))
	if len(imgs) < 3 {
		t.Fatalf("MTD images not found under %s", mtd)
	}
	slices.Sort(imgs)
	os.MkdirAll(filepath.Join(tmp, "upper/tmp/imgs"), 0o755)
	for _, src := range imgs[:3] {
		b, _ := os.ReadFile(src)
		os.WriteFile(filepath.Join(tmp, "upper/tmp/imgs", filepath.Base(src)), b, 0o644)
	}
	out := overlay(t, tmp, `
dpkg -i /tmp/debs/`+filepath.Base(deb1)+`
echo "== passwd"; getent passwd gnld
echo "== groups"; id -nG gnld
echo "== env"; stat -c '%U:%G %a' /etc/gnld/gnld.env
echo "== verify"; systemd-analyze verify /usr/lib/systemd/system/gnld.service 2>&1; echo "exit $?"
echo "== enable"; systemctl enable gnld.service 2>&1
echo "== inspect"; gnlctl inspect /usr/share/gnld/model
echo "== run"
install -d -o gnld -g gnld -m 0750 /var/lib/gnld
setpriv --reuid=gnld --regid=gnld --init-groups sh -ec '
  set -a; . /etc/gnld/gnld.env
  GNLD_CAMERAS=bench=dir:/tmp/imgs GNLD_MQTT_BROKER=tcp://127.0.0.1:9 GNLD_MQTT_TIMEOUT=1s GNLD_SHUTDOWN_TIMEOUT=1s
  exec gnld' 2>&1; echo "exit $?"
ls /var/lib/gnld/spool | grep -c '\.msg$'
`)
	if p := section(out, "passwd"); !regexp.MustCompile(`^gnld:x:\d{3}:\d+:gnld anomaly detection:/var/lib/gnld:/usr/sbin/nologin\n$`).MatchString(p) {
		t.Errorf("gnld user: %q (want a system user, home /var/lib/gnld, nologin)", p)
	}
	if g := strings.Fields(section(out, "groups")); !slices.Contains(g, "gnld") || !slices.Contains(g, "video") {
		t.Errorf("gnld's groups %v, want gnld and video", g)
	}
	if e := section(out, "env"); e != "root:gnld 640\n" {
		t.Errorf("/etc/gnld/gnld.env: %q, want root:gnld 640", e)
	}
	if v := section(out, "verify"); v != "exit 0\n" {
		t.Errorf("systemd-analyze verify on the installed unit:\n%s", v)
	}
	if _, err := os.Lstat(filepath.Join(tmp, "upper/etc/systemd/system/multi-user.target.wants/gnld.service")); err != nil {
		t.Errorf("systemctl enable: %v\n%s", err, section(out, "enable"))
	}
	if i := section(out, "inspect"); !strings.Contains(i, "gnl-mtd") {
		t.Errorf("gnlctl inspect on the installed bundle:\n%s", i)
	}
	if r := section(out, "run"); !strings.Contains(r, "exit 0\n3\n") {
		t.Errorf("installed gnld as the gnld user, 3 images, broker away: want exit 0 and 3 spooled results:\n%s", r)
	}
	for _, f := range []string{"usr/bin/gnld", "usr/bin/gnlctl", "usr/share/gnld/model/model.tflite", "usr/lib/systemd/system/gnld.service"} {
		if _, err := os.Stat(filepath.Join(tmp, "upper", f)); err != nil {
			t.Errorf("installed: %v", err)
		}
	}

	// The installed unit under a real systemd.
	t.Run("systemd", func(t *testing.T) { underSystemd(t, tmp, imgs[:3]) })

	// Upgrade with an edited conffile: the edit stays; then purge.
	out = overlay(t, tmp, `
echo 'GNLD_SITE=line7' >> /etc/gnld/gnld.env
dpkg -i /tmp/debs/`+filepath.Base(deb2)+` 2>&1
echo "== version"; dpkg-query -W -f '${Version}\n' gnld
echo "== env"; tail -n1 /etc/gnld/gnld.env; stat -c '%U:%G %a' /etc/gnld/gnld.env
echo "== purge"; dpkg --purge gnld 2>&1
echo "== purged"; ls /usr/bin/gnld /etc/gnld /usr/share/gnld /var/lib/gnld 2>&1 || true
echo "== user"; getent passwd gnld | cut -d: -f1
`)
	if v := section(out, "version"); v != "1.0~test2\n" {
		t.Errorf("after the upgrade: version %q", v)
	}
	if e := section(out, "env"); e != "GNLD_SITE=line7\nroot:gnld 640\n" {
		t.Errorf("edited conffile after the upgrade: %q, want the edit kept, root:gnld 640", e)
	}
	if p := section(out, "purged"); strings.Count(p, "No such file or directory") != 4 {
		t.Errorf("after purge:\n%s", p)
	}
	if u := section(out, "user"); u != "gnld\n" {
		t.Errorf("gnld user after purge: %q (Debian keeps system users)", u)
	}
	var left []string
	filepath.WalkDir(filepath.Join(tmp, "upper/usr"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "gnld") {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("files left after purge: %v", left)
	}
}
