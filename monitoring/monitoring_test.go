package monitoring

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gnld/internal/testbroker"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

const (
	rulesFile     = "gnld.rules.yml"
	rulesTestFile = "rules_test.yml"
	dashboardFile = "grafana-dashboard.json"
)

// tool finds promtool or prometheus; their absence fails the test, since
// make test runs inside tools/sidroot, which has them.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found (%v): these tests need Debian's prometheus package; run them with `make test-go`, inside tools/sidroot", name, err)
	}
	return p
}

// promtool runs promtool with args and fails the test with its output when
// it exits non-zero.
func promtool(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(tool(t, "promtool"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestRulesCheck(t *testing.T) {
	out := promtool(t, "check", "rules", rulesFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules: no SUCCESS:\n%s", out)
	}
	// Every alert the fleet docs promise is there, with the parts each needs.
	src := readFile(t, rulesFile)
	for _, name := range []string{"GnldDown", "GnldNoResults", "GnldWorkerStuck", "GnldBrokerAway", "GnldSpoolGrowing",
		"GnldResultsLost", "GnldCameraDrifting", "GnldFalseAlarmRateHigh", "GnldModelReloadRefused",
		"GnldPartsNotInspected"} {
		if !strings.Contains(src, "- alert: "+name+"\n") {
			t.Errorf("%s: no alert %s", rulesFile, name)
		}
	}
	for i, block := range strings.Split(src, "- alert: ")[1:] {
		for _, part := range []string{"\n        for: ", "severity: ", "summary: ", "description: ", "runbook_url: "} {
			if !strings.Contains(block, part) {
				t.Errorf("%s: alert %d (%s) has no %q", rulesFile, i+1, strings.Fields(block)[0], strings.TrimSpace(part))
			}
		}
	}
	// The runbook links point at sections that exist.
	for _, m := range regexp.MustCompile(`runbook_url: (\S+)#(\S+)`).FindAllStringSubmatch(src, -1) {
		doc := readFile(t, filepath.Join("..", m[1]))
		if !slices.Contains(anchors(doc), m[2]) {
			t.Errorf("%s: runbook_url %s#%s: no such section", rulesFile, m[1], m[2])
		}
	}
}

func TestRulesUnit(t *testing.T) {
	out := promtool(t, "test", "rules", rulesTestFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: no SUCCESS:\n%s", out)
	}
}

// dashboard is the part of Grafana's JSON model the test reads.
type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Type       string          `json:"type"`
			Name       string          `json:"name"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct{ Type, UID string }

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	Panels     []panel     `json:"panels"` // a collapsed row's
	Targets    []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
}

// dashExpr is one PromQL expression of the dashboard.
type dashExpr struct{ where, expr string }

// loadDashboard reads the dashboard and checks its shape: unique panel ids,
// every query on ${DS_PROMETHEUS}, the variables. It returns every
// expression, the variables' label_values selectors included.
func loadDashboard(t *testing.T) []dashExpr {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader([]byte(readFile(t, dashboardFile))))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: not valid JSON: %v", dashboardFile, err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("%s: no title or uid", dashboardFile)
	}
	var exprs []dashExpr
	ids := map[int]string{}
	ds := func(where string, s *datasource) {
		if s == nil || s.Type != "prometheus" || s.UID != "${DS_PROMETHEUS}" {
			t.Errorf("%s: %s: datasource %+v, want prometheus ${DS_PROMETHEUS}", dashboardFile, where, s)
		}
	}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
			if other, dup := ids[p.ID]; dup || p.ID == 0 {
				t.Errorf("%s: %s: id not unique (also %s)", dashboardFile, where, other)
			}
			ids[p.ID] = where
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			ds(where, p.Datasource)
			if len(p.Targets) == 0 {
				t.Errorf("%s: %s: no query", dashboardFile, where)
			}
			for _, q := range p.Targets {
				ds(where+" "+q.RefID, q.Datasource)
				if strings.TrimSpace(q.Expr) == "" {
					t.Errorf("%s: %s %s: empty expr", dashboardFile, where, q.RefID)
				}
				exprs = append(exprs, dashExpr{where + " " + q.RefID, q.Expr})
			}
		}
	}
	walk(d.Panels)

	vars := map[string]bool{}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		vars[v.Type+":"+v.Name] = true
		if v.Type != "query" {
			continue
		}
		ds("variable "+v.Name, v.Datasource)
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Errorf("%s: variable %s: query %s: %v", dashboardFile, v.Name, v.Query, err)
		}
		if m := labelValues.FindStringSubmatch(q.Query); m != nil {
			exprs = append(exprs, dashExpr{"variable " + v.Name, m[1]})
		} else {
			t.Errorf("%s: variable %s: query %q is not label_values(SELECTOR, LABEL)", dashboardFile, v.Name, q.Query)
		}
	}
	for _, want := range []string{"datasource:DS_PROMETHEUS", "query:instance", "query:camera"} {
		if !vars[want] {
			t.Errorf("%s: no variable %s", dashboardFile, want)
		}
	}
	return exprs
}

// grafanaVars replaces Grafana's variables in expr as Grafana would at
// query time: $__rate_interval and the other intervals by window, a
// dashboard variable ($instance, ${camera}) by ".*" (its All).
func grafanaVars(expr, window string) string {
	return regexp.MustCompile(`\$\{?(\w+)\}?`).ReplaceAllStringFunc(expr, func(v string) string {
		if strings.HasPrefix(strings.Trim(v, "${}"), "__") {
			return window
		}
		return ".*"
	})
}

// The dashboard is well-formed, and every expression in it parses: promtool
// has no command that checks an expression alone, so they go into a rules
// file as recording rules, which promtool check rules parses.
func TestDashboard(t *testing.T) {
	exprs := loadDashboard(t)
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(grafanaVars(e.expr, "5m")) // a JSON string is a YAML string
		fmt.Fprintf(&rules, "      # %s\n      - record: dashboard:expr_%d\n        expr: %s\n", e.where, i, q)
	}
	path := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool(t, "promtool"), "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("an expression of %s does not parse: %v\n%s\nthe rules file:\n%s", dashboardFile, err, out, rules.String())
	}
	t.Logf("%d expressions parse", len(exprs))

	// It shows what the fleet docs say it shows.
	all := ""
	for _, e := range exprs {
		all += e.expr + "\n"
	}
	for _, m := range []string{"gnld_score{", "gnld_threshold{", "gnld_frames_scored_total{", "gnld_anomalies_total{",
		"gnld_stage_duration_seconds_bucket{", "gnld_drift_score{", "gnld_mqtt_connected{", "gnld_spool_length{",
		"gnld_camera_model_info{", "gnld_model_info{"} {
		if !strings.Contains(all, m) {
			t.Errorf("%s: no panel reads %s", dashboardFile, strings.TrimSuffix(m, "{"))
		}
	}
}

// gnldMetric matches a gnld metric name in rules, dashboard and source.
var gnldMetric = regexp.MustCompile(`\bgnld_[a-z0-9_]*[a-z0-9]\b`)

// usedMetrics are the gnld metrics that the rules and the dashboard name.
func usedMetrics(t *testing.T) map[string][]string {
	used := map[string][]string{}
	for _, f := range []string{rulesFile, dashboardFile} {
		for _, m := range gnldMetric.FindAllString(readFile(t, f), -1) {
			if !slices.Contains(used[m], f) {
				used[m] = append(used[m], f)
			}
		}
	}
	return used
}

// known reports whether name is in exported, as itself or as a histogram's
// _bucket, _sum or _count.
func known(exported map[string]bool, name string) bool {
	if exported[name] {
		return true
	}
	for _, s := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, s); ok && exported[base] {
			return true
		}
	}
	return false
}

// Every gnld metric the rules and the dashboard name is one gnld defines
// (internal/metrics, and cmd/gnld's drift collector): a misspelt name would
// make an alert that never fires and a panel that stays empty. The live
// test checks the same against a running gnld's /metrics.
func TestMetricNames(t *testing.T) {
	defined := map[string]bool{}
	files, _ := filepath.Glob("../internal/metrics/*.go")
	more, _ := filepath.Glob("../cmd/gnld/*.go")
	for _, f := range append(files, more...) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		for _, m := range regexp.MustCompile(`"(gnld_[a-z0-9_]+)"`).FindAllStringSubmatch(readFile(t, f), -1) {
			defined[m[1]] = true
		}
	}
	if len(defined) < 20 {
		t.Fatalf("found only %d metric names in internal/metrics and cmd/gnld: %v", len(defined), defined)
	}
	for name, where := range usedMetrics(t) {
		if !known(defined, name) {
			t.Errorf("%s names %s, which gnld does not export", strings.Join(where, " and "), name)
		}
	}
}

// ---- the live test ----------------------------------------------------

// liveRules is the rules file with every range shortened to 4s and every
// `for:` to 2s, for Prometheus scraping and evaluating every second.
func liveRules(t *testing.T) string {
	src := readFile(t, rulesFile)
	ranges := regexp.MustCompile(`\[\d+[smhdwy]\]`)
	fors := regexp.MustCompile(`(?m)^(\s+for:\s+)\S+$`)
	if len(ranges.FindAllString(src, -1)) < 8 || len(fors.FindAllString(src, -1)) < 9 {
		t.Fatalf("%s: expected ranges and for: clauses to shorten", rulesFile)
	}
	src = ranges.ReplaceAllString(src, "[4s]")
	return fors.ReplaceAllString(src, "${1}2s")
}

// syncBuffer is a bytes.Buffer for a child's output, read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs a child process, ended (SIGTERM, then SIGKILL) when the test
// ends; on failure the test log shows its output.
func start(t *testing.T, name string, env []string, bin string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("---- %s output ----\n%s", name, lastLines(out.String(), 40))
		}
	})
}

// imageDir copies n MTD good images into a new folder.
func imageDir(t *testing.T, n int) string {
	root := os.Getenv("MTD")
	if root == "" {
		root = "../../shared/data/mtd"
	}
	names, _ := filepath.Glob(filepath.Join(root, "test", "good", "*.jpg"))
	if len(names) < n {
		t.Skipf("MTD test/good (%d images) not found under %s", n, root)
	}
	sort.Strings(names)
	dir := t.TempDir()
	for i, src := range names[:n] {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%03d.jpg", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// gnldEnv is this process's environment without GNLD_ variables, plus env.
func gnldEnv(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GNLD_") {
			out = append(out, kv)
		}
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// httpGet GETs u and returns the body of a 200 answer.
func httpGet(u string) (string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", u, resp.Status, b)
	}
	return string(b), err
}

// promAPI GETs Prometheus's HTTP API and decodes data.
func promAPI(base, path string, q url.Values, data any) error {
	body, err := httpGet(base + path + "?" + q.Encode())
	if err != nil {
		return err
	}
	var r struct {
		Status, Error string
		Data          json.RawMessage
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return err
	}
	if r.Status != "success" {
		return fmt.Errorf("%s %v: %s", path, q, r.Error)
	}
	return json.Unmarshal(r.Data, data)
}

// sample is one element of an instant vector.
type sample struct {
	Metric map[string]string
	Value  [2]any
}

func query(base, expr string) ([]sample, error) {
	var d struct{ Result []sample }
	err := promAPI(base, "/api/v1/query", url.Values{"query": {expr}}, &d)
	return d.Result, err
}

type alert struct {
	Labels, Annotations map[string]string
	State               string
}

func alerts(base string) ([]alert, error) {
	var d struct{ Alerts []alert }
	err := promAPI(base, "/api/v1/alerts", nil, &d)
	return d.Alerts, err
}

// waitFor polls cond every 250 ms until it is true or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (last error: %v)", what, timeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Debian's Prometheus scrapes two real gnld processes every second, with
// the rules loaded (ranges 4s, for: 2s): dev1's camera line1 loops over its
// images for ever, dev2's camera line2 reads 75 images at 5 a second and
// ends, gnld staying up (GNLD_EXIT_WHEN_DONE=false). GnldNoResults must
// fire for line2 on dev2 and not for line1; dev1's camera press, in PLC
// trigger mode with a queue of one, gets a burst of triggers, and
// GnldPartsNotInspected must fire for it; every rule evaluates without
// error; every gnld metric the rules and the dashboard name is in gnld's
// /metrics; every dashboard expression runs and returns series.
func TestLivePrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds gnld, runs mosquitto, two gnld and Prometheus; skipped with -short")
	}
	began := time.Now()
	prometheus := tool(t, "prometheus")
	loopDir, endDir := imageDir(t, 4), imageDir(t, 75)
	broker := testbroker.Start(t)

	tmp := t.TempDir()
	bin := filepath.Join(tmp, "gnld")
	if out, err := exec.Command("go", "build", "-o", bin, "gnld/cmd/gnld").CombinedOutput(); err != nil {
		t.Fatalf("go build gnld: %v\n%s", err, out)
	}
	t.Logf("gnld built in %s", time.Since(began).Round(time.Millisecond))
	model, err := filepath.Abs("../models/default")
	if err != nil {
		t.Fatal(err)
	}

	type device struct{ name, camera, dir, addr string }
	devs := []device{
		{"dev1", "line1", loopDir, fmt.Sprintf("127.0.0.1:%d", testbroker.FreePort(t))},
		{"dev2", "line2", endDir, fmt.Sprintf("127.0.0.1:%d", testbroker.FreePort(t))},
	}
	for _, d := range devs {
		cam := "GNLD_CAMERA_" + strings.ToUpper(d.camera) + "_"
		env := map[string]string{
			"GNLD_CAMERAS": d.camera + "=dir:" + d.dir, cam + "FPS": "5", cam + "LOOP": fmt.Sprint(d.camera == "line1"),
			"GNLD_EXIT_WHEN_DONE": "false", "GNLD_MODEL_DIR": model, "GNLD_MQTT_BROKER": broker.URL(),
			"GNLD_SITE": "test", "GNLD_DEVICE": d.name, "GNLD_HTTP_ADDR": d.addr,
			"GNLD_SPOOL_DIR": filepath.Join(tmp, d.name, "spool"), "GNLD_CALIBRATION_DIR": filepath.Join(tmp, d.name, "calibration"),
			"GNLD_STATS_INTERVAL": "0", "GNLD_LOG_LEVEL": "info",
		}
		if d.name == "dev1" { // and a camera in PLC trigger mode, with a queue of one
			env["GNLD_CAMERAS"] += ",press=dir:" + d.dir
			env["GNLD_CAMERA_PRESS_LOOP"], env["GNLD_CAMERA_PRESS_FPS"] = "true", "5"
			env["GNLD_CAMERA_PRESS_TRIGGER"], env["GNLD_TRIGGER_QUEUE"] = "mqtt", "1"
		}
		start(t, "gnld "+d.name, gnldEnv(env), bin)
	}
	for _, d := range devs {
		waitFor(t, 20*time.Second, d.name+" serves /metrics with a result", func() (bool, error) {
			body, err := httpGet("http://" + d.addr + "/metrics")
			return err == nil && regexp.MustCompile(`(?m)^gnld_frames_scored_total\{camera="`+d.camera+`"\} [1-9]`).MatchString(body), err
		})
	}

	// Every gnld metric the rules and the dashboard name is exported.
	body, err := httpGet("http://" + devs[0].addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (gnld_\w+) `).FindAllStringSubmatch(body, -1) {
		exported[m[1]] = true
	}
	for name, where := range usedMetrics(t) {
		if !known(exported, name) {
			t.Errorf("%s names %s, which a running gnld does not export", strings.Join(where, " and "), name)
		}
	}

	rules := filepath.Join(tmp, "gnld.rules.yml")
	if err := os.WriteFile(rules, []byte(liveRules(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, "check", "rules", rules)
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: gnld
    static_configs:
      - targets: [%q]
        labels: {device: %s}
      - targets: [%q]
        labels: {device: %s}
`, rules, devs[0].addr, devs[0].name, devs[1].addr, devs[1].name)
	confPath := filepath.Join(tmp, "prometheus.yml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", testbroker.FreePort(t))
	base := "http://" + promAddr
	start(t, "prometheus", os.Environ(), prometheus, "--config.file="+confPath, "--storage.tsdb.path="+filepath.Join(tmp, "tsdb"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	waitFor(t, 20*time.Second, "Prometheus ready", func() (bool, error) {
		_, err := httpGet(base + "/-/ready")
		return err == nil, err
	})
	t.Logf("Prometheus ready at %s", time.Since(began).Round(time.Millisecond))

	// Prometheus sees both cameras produce results, line2 before it ends.
	for _, d := range devs {
		waitFor(t, 20*time.Second, "Prometheus sees "+d.camera+" scoring", func() (bool, error) {
			r, err := query(base, `increase(gnld_frames_scored_total{camera="`+d.camera+`"}[4s]) > 0`)
			return len(r) == 1 && r[0].Metric["device"] == d.name, err
		})
	}
	t.Logf("both cameras scoring in Prometheus at %s", time.Since(began).Round(time.Millisecond))

	// A burst of triggers for press, more than its queue holds: the ones
	// refused are parts not inspected, and GnldPartsNotInspected fires.
	plc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker.URL()).SetClientID("plc"))
	if tok := plc.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("PLC connect: %v", tok.Error())
	}
	defer plc.Disconnect(100)
	for i := range 10 {
		if tok := plc.Publish("gnl/test/press/trigger", 1, false, fmt.Sprintf("part-%d", i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("trigger: %v", tok.Error())
		}
	}

	// With every range at 4s and for: at 2s, it fires for about 2 s.
	var parts alert
	waitFor(t, 15*time.Second, "GnldPartsNotInspected firing for press", func() (bool, error) {
		as, err := alerts(base)
		for _, a := range as {
			if a.Labels["alertname"] == "GnldPartsNotInspected" && a.State == "firing" {
				parts = a
				return true, nil
			}
		}
		return false, err
	})
	t.Logf("GnldPartsNotInspected firing at %s: %s: %s", time.Since(began).Round(time.Millisecond), parts.Annotations["summary"], parts.Annotations["description"])
	if parts.Labels["camera"] != "press" || parts.Labels["device"] != "dev1" || parts.Labels["severity"] != "critical" {
		t.Errorf("the alert: %+v", parts)
	}

	// line2 runs out of images 15 s after its start; GnldNoResults fires for it.
	var fired alert
	waitFor(t, 60*time.Second, "GnldNoResults firing for line2", func() (bool, error) {
		as, err := alerts(base)
		for _, a := range as {
			if a.Labels["alertname"] == "GnldNoResults" && a.Labels["camera"] == "line2" && a.State == "firing" {
				fired = a
				return true, nil
			}
		}
		return false, err
	})
	t.Logf("GnldNoResults firing for line2 at %s: %s", time.Since(began).Round(time.Millisecond), fired.Annotations["summary"])
	if fired.Labels["device"] != "dev2" || fired.Labels["severity"] != "critical" || fired.Labels["instance"] != devs[1].addr ||
		!strings.Contains(fired.Annotations["summary"], "camera line2 on dev2") {
		t.Errorf("the alert: %+v", fired)
	}

	// line1 and press go on: no GnldNoResults for them, not even pending.
	as, err := alerts(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		t.Logf("alert %s %s %v", a.State, a.Labels["alertname"], a.Labels)
		if a.Labels["alertname"] == "GnldNoResults" && a.Labels["camera"] != "line2" {
			t.Errorf("GnldNoResults %s for %v: that camera still produces", a.State, a.Labels)
		}
	}
	if r, err := query(base, `increase(gnld_frames_scored_total{camera="line1"}[4s]) > 0`); err != nil || len(r) != 1 {
		t.Errorf("line1 no longer scoring in Prometheus: %v %v", r, err)
	}

	// Every rule evaluates without error.
	var rs struct {
		Groups []struct {
			Name  string
			Rules []struct{ Name, Health, LastError string }
		}
	}
	if err := promAPI(base, "/api/v1/rules", nil, &rs); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rs.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health != "ok" {
				t.Errorf("rule %s/%s: health %q %s", g.Name, r.Name, r.Health, r.LastError)
			}
		}
	}
	if n != 10 {
		t.Errorf("Prometheus loaded %d rules, want 10", n)
	}

	// Every dashboard expression runs against the real series and finds some.
	for _, e := range loadDashboard(t) {
		r, err := query(base, grafanaVars(e.expr, "4s"))
		if err != nil || len(r) == 0 {
			t.Errorf("%s: %s: %d series, %v", dashboardFile, e.where, len(r), err)
		}
	}
	t.Logf("live test done in %s", time.Since(began).Round(time.Millisecond))
}

// ---- helpers ------------------------------------------------------------

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// anchors are the GitHub-style anchors of a Markdown file's headings.
func anchors(doc string) []string {
	var out []string
	for _, line := range strings.Split(doc, "\n") {
		h, ok := strings.CutPrefix(line, "#")
		if !ok {
			continue
		}
		h = strings.ToLower(strings.TrimSpace(strings.TrimLeft(h, "#")))
		var b strings.Builder
		for _, r := range h {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
				b.WriteRune(r)
			}
		}
		out = append(out, b.String())
	}
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
