package packaging

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gnld/internal/testbroker"
	"gnld/publish"
)

// Models rolled out through apt (tools/mkdeb-model, packaging/debian-model):
// gnld and two versions of a model package in a repository served over
// HTTP, installed with apt on a booted systemd; gnld runs the installed unit
// on the model's link while frames flow, the model is upgraded and then
// downgraded with apt. Every result arrives (one run, sequence numbers
// without a gap), each names the model that scored it, and gnld is never
// restarted: the postinst's reload is the hot swap.
func TestModelDebs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: boots systemd on an overlay of this system (make test runs it as root in the build root)")
	}
	for _, tool := range []string{"dpkg-scanpackages", "apt-get", "unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: run in the build root (make test)", tool)
		}
	}
	root, _ := filepath.Abs("..")
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	run(t, root, nil, "go", "build", "-o", bin+"/", "./cmd/gnld", "./cmd/gnlctl")
	repo := filepath.Join(tmp, "repo")
	run(t, root, []string{"BIN=" + bin, "VERSION=1.0~test"}, "tools/mkdeb", repo)

	// Two versions of one model: the tiny test bundle under two version names.
	versions := []string{"20261201-aaaaaaaa", "20261202-bbbbbbbb"}
	var pkgVersions []string
	for _, v := range versions {
		b := filepath.Join(tmp, "bundle-"+v)
		os.MkdirAll(b, 0o755)
		for _, f := range []string{"model.tflite", "model.json"} {
			data, err := os.ReadFile(filepath.Join(root, "models/testdata/tiny", f))
			if err != nil {
				t.Fatal(err)
			}
			if f == "model.json" {
				var m map[string]any
				json.Unmarshal(data, &m)
				m["version"] = v
				data, _ = json.Marshal(m)
			}
			os.WriteFile(filepath.Join(b, f), data, 0o644)
		}
		deb := run(t, root, []string{"NAME=tiny"}, "tools/mkdeb-model", b, repo)
		if want := "gnld-model-tiny_" + strings.ReplaceAll(v, "-", "+") + "_all.deb"; filepath.Base(deb) != want {
			t.Errorf("model package %s, want %s", filepath.Base(deb), want)
		}
		pkgVersions = append(pkgVersions, strings.ReplaceAll(v, "-", "+"))
	}
	idx := run(t, repo, nil, "dpkg-scanpackages", "--multiversion", ".")
	os.WriteFile(filepath.Join(repo, "Packages"), []byte(idx+"\n"), 0o644)
	srv := httptest.NewServer(http.FileServer(http.Dir(repo))) // the plant's package server
	defer srv.Close()

	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	upper := filepath.Join(tmp, "upper")
	for dir, files := range map[string]map[string]string{
		"etc/apt/sources.list.d": {"gnld.list": "deb [trusted=yes] " + srv.URL + " ./\n"},
		"etc/apt/apt.conf.d":     {"99gnld-test": "APT::Sandbox::User \"root\";\n"},
	} {
		os.MkdirAll(filepath.Join(upper, dir), 0o755)
		for name, body := range files {
			os.WriteFile(filepath.Join(upper, dir, name), []byte(body), 0o644)
		}
	}
	imgs, _ := filepath.Glob(filepath.Join(root, "../shared/data/mtd/test/good/*.jpg"))
	if len(imgs) < 3 {
		t.Skip("MTD images not found under ../shared/data/mtd")
	}
	os.MkdirAll(filepath.Join(upper, "srv/gnld-test"), 0o755)
	for _, src := range imgs[:3] {
		data, _ := os.ReadFile(src)
		os.WriteFile(filepath.Join(upper, "srv/gnld-test", filepath.Base(src)), data, 0o644)
	}

	s := bootSystem(t, tmp)
	apt := func(args ...string) string {
		t.Helper()
		out, err := s.run(t.Context(), append([]string{"env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "-y"}, args...)...)
		if err != nil {
			t.Fatalf("apt-get %v: %v\n%s", args, err, out)
		}
		return out
	}
	apt("update")
	apt("install", "gnld=1.0~test", "gnld-model-tiny="+pkgVersions[0])
	env := fmt.Sprintf("GNLD_CAMERAS=bench=dir:/srv/gnld-test\nGNLD_CAMERA_BENCH_LOOP=true\nGNLD_CAMERA_BENCH_FPS=10\n"+
		"GNLD_SITE=test\nGNLD_DEVICE=dev\nGNLD_MQTT_BROKER=%s\nGNLD_MODEL_DIR=/var/lib/gnld/models/tiny\n", b.URL())
	s.must("sh", "-c", "printf '%s' '"+env+"' > /etc/gnld/gnld.env")
	if l := strings.TrimSpace(s.must("readlink", "/var/lib/gnld/models/tiny")); l != "/usr/share/gnld/models/tiny/"+pkgVersions[0] {
		t.Fatalf("model link: %q", l)
	}
	s.must("systemctl", "start", "gnld")
	pid := s.show("gnld", "MainPID")["MainPID"]

	// Waits for a result scored by version v, at least min results in all.
	served := func(v string, min int) {
		t.Helper()
		sub.WaitFor(t, 60*time.Second, "results of model "+v, func([]testbroker.Msg) bool {
			rs := sub.On("/bench/result")
			if len(rs) < min {
				return false
			}
			var r publish.Result
			json.Unmarshal(rs[len(rs)-1].Payload, &r)
			return r.Model.Version == v
		})
	}
	served(versions[0], 10)
	t0 := time.Now()
	apt("install", "gnld-model-tiny="+pkgVersions[1]) // the upgrade, while frames flow
	served(versions[1], len(sub.On("/bench/result"))+5)
	t.Logf("upgrade through apt: results from %s %s after apt began", versions[1], time.Since(t0).Round(100*time.Millisecond))
	t0 = time.Now()
	apt("install", "--allow-downgrades", "gnld-model-tiny="+pkgVersions[0]) // the rollback
	served(versions[0], len(sub.On("/bench/result"))+5)
	t.Logf("rollback through apt: results from %s %s after apt began", versions[0], time.Since(t0).Round(100*time.Millisecond))
	if p := s.show("gnld", "MainPID", "NRestarts"); p["MainPID"] != pid || p["NRestarts"] != "0" {
		t.Errorf("gnld was restarted: %v, started as %s", p, pid)
	}
	s.must("systemctl", "stop", "gnld")
	if j := s.journal(); !strings.Contains(j, "model: reloaded") {
		t.Errorf("no reload in the journal:\n%s", j)
	}

	// Every result: one run, sequence numbers 1..n without a gap, and the
	// models in the order they were installed.
	var runID string
	var order []string
	for i, m := range sub.On("/bench/result") {
		var r publish.Result
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			runID = r.RunID
		}
		if r.RunID != runID || r.Sequence != uint64(i+1) {
			t.Fatalf("result %d: run %s sequence %d; want run %s sequence %d (a result lost, or a restart)", i, r.RunID, r.Sequence, runID, i+1)
		}
		if len(order) == 0 || order[len(order)-1] != r.Model.Version {
			order = append(order, r.Model.Version)
		}
	}
	if want := []string{versions[0], versions[1], versions[0]}; strings.Join(order, ",") != strings.Join(want, ",") {
		t.Errorf("models in the results: %v, want %v", order, want)
	}
	t.Logf("%d results, none lost, models %v, one process", len(sub.On("/bench/result")), order)

	// Removing the model package removes its link.
	apt("remove", "gnld-model-tiny")
	if out, err := s.run(t.Context(), "ls", "/var/lib/gnld/models/tiny"); err == nil {
		t.Errorf("link left after remove: %s", out)
	}
}
