package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"gnld/evidence"
	"gnld/internal/auth"
	"gnld/internal/testbroker"
	"gnld/publish"
	"gnld/teach"
)

// The review page and its API (review.go, teach.go, package auth): who may
// do what, teaching a false alarm and undoing it, HTTPS, and the whole
// flow in a real browser.

// The MTD good images that the default bundle scores highest (about 5.65
// and 5.62 against its threshold of about 6.12): with a camera threshold
// of reviewThreshold both are flagged, false alarms to teach. Teaching the
// first brings it to about 4.66.
const (
	reviewFalseAlarm  = "exp6_num_183290.jpg"
	reviewFalseAlarm2 = "exp6_num_193234.jpg"
	reviewThreshold   = "5.2"
)

// reviewUsers writes a users file with one account per role given, each
// with its own distinctive password, at bcrypt's lowest cost.
func reviewUsers(t *testing.T, roles map[string]auth.Role) (path string, passwords map[string]string) {
	old := auth.HashCost
	auth.HashCost = bcrypt.MinCost
	t.Cleanup(func() { auth.HashCost = old })
	path = filepath.Join(t.TempDir(), "users.json")
	users := auth.NewUsers(path)
	passwords = map[string]string{}
	for name, role := range roles {
		passwords[name] = secret(t, "Pw"+name)
		if err := users.Add(name, role, passwords[name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := users.Save(); err != nil {
		t.Fatal(err)
	}
	return path, passwords
}

// mtdImage copies MTD's test/<class>/<name> into dir.
func mtdImage(t *testing.T, dir, class, name string) {
	root := os.Getenv("MTD")
	if root == "" {
		root = "../../../shared/data/mtd"
	}
	b, err := os.ReadFile(filepath.Join(root, "test", class, name))
	if err != nil {
		t.Skipf("MTD image test/%s/%s not found under %s: %v", class, name, root, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// reviewDaemon is gnld run in-process, with its log readable while it
// runs.
type reviewDaemon struct {
	t      *testing.T
	log    *syncBuffer
	cancel context.CancelFunc
	exited chan struct{}
	err    error // run's error, once exited is closed
	once   sync.Once
}

// startReviewDaemon runs gnld with env until the test ends or stop.
func startReviewDaemon(t *testing.T, env map[string]string) *reviewDaemon {
	setEnv(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	d := &reviewDaemon{t: t, log: &syncBuffer{}, cancel: cancel, exited: make(chan struct{})}
	go func() {
		d.err = run(ctx, nil, io.Discard, d.log)
		close(d.exited)
	}()
	t.Cleanup(func() { d.stop() })
	return d
}

// stop ends gnld and returns its log; a failed run fails the test.
func (d *reviewDaemon) stop() string {
	d.once.Do(func() {
		d.cancel()
		select {
		case <-d.exited:
			if d.err != nil {
				d.t.Errorf("gnld: %v\n%s", d.err, d.log)
			}
		case <-time.After(30 * time.Second):
			d.t.Errorf("gnld did not stop within 30 s\n%s", d.log)
		}
	})
	return d.log.String()
}

// wait polls ok until it holds, failing the test at the deadline or as
// soon as gnld exits.
func (d *reviewDaemon) wait(timeout time.Duration, what string, ok func() bool) {
	d.t.Helper()
	for deadline := time.Now().Add(timeout); !ok(); time.Sleep(50 * time.Millisecond) {
		select {
		case <-d.exited:
			d.t.Fatalf("gnld exited while waiting for %s: %v\n%s", what, d.err, d.log)
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out after %s waiting for %s\n%s", timeout, what, d.log)
		}
	}
}

// webClient is one user's browser without the browser: a cookie jar, the
// CSRF token from the login, and no following of redirects.
type webClient struct {
	t    *testing.T
	base string
	hc   *http.Client
	csrf string
}

func newWebClient(t *testing.T, base string, tr http.RoundTripper) *webClient {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Jar: jar, Transport: tr, Timeout: 60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &webClient{t: t, base: base, hc: hc}
}

// answer is an HTTP response, read.
type answer struct {
	code   int
	header http.Header
	body   []byte
}

func (a answer) String() string {
	b := a.body
	if len(b) > 300 {
		b = b[:300]
	}
	return fmt.Sprintf("%d %q", a.code, b)
}

// request sends method path with body (JSON when not nil) and the headers
// hdr. A text/event-stream answer is not read beyond its headers.
func (c *webClient) request(method, path string, body any, hdr map[string]string) answer {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	a := answer{code: resp.StatusCode, header: resp.Header}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		if a.body, err = io.ReadAll(resp.Body); err != nil {
			c.t.Fatalf("%s %s: reading the answer: %v", method, path, err)
		}
	}
	return a
}

// api is a JSON request as the page makes it: Accept JSON, and for a
// write the CSRF token when withCSRF.
func (c *webClient) api(method, path string, body any, withCSRF bool) answer {
	c.t.Helper()
	hdr := map[string]string{"Accept": "application/json"}
	if withCSRF {
		hdr["X-CSRF-Token"] = c.csrf
	}
	return c.request(method, path, body, hdr)
}

// getJSON GETs path, wants 200 and decodes the answer into v.
func (c *webClient) getJSON(path string, v any) {
	c.t.Helper()
	a := c.api("GET", path, nil, false)
	if a.code != http.StatusOK {
		c.t.Fatalf("GET %s: %s", path, a)
	}
	if err := json.Unmarshal(a.body, v); err != nil {
		c.t.Fatalf("GET %s: %v in %s", path, err, a.body)
	}
}

// login logs in with a JSON POST /login and keeps the CSRF token.
func (c *webClient) login(name, password string) {
	c.t.Helper()
	a := c.request("POST", "/login", map[string]string{"name": name, "password": password},
		map[string]string{"Accept": "application/json"})
	var who struct {
		User string `json:"user"`
		Role string `json:"role"`
		CSRF string `json:"csrf"`
	}
	if a.code != http.StatusOK || json.Unmarshal(a.body, &who) != nil || who.User != name || who.CSRF == "" {
		c.t.Fatalf("login as %s: %s", name, a)
	}
	c.csrf = who.CSRF
	if c.session() == "" {
		c.t.Fatalf("login as %s: no %s cookie in the jar (Set-Cookie %q)", name, auth.CookieName, a.header.Values("Set-Cookie"))
	}
}

// session is the session cookie's value in the jar.
func (c *webClient) session() string {
	u, _ := url.Parse(c.base)
	for _, ck := range c.hc.Jar.Cookies(u) {
		if ck.Name == auth.CookieName {
			return ck.Value
		}
	}
	return ""
}

// recordFor is the id of a kept record of frame file (the published
// result's file), or "". Records of the same frame look alike, so the
// list (newest first) is walked until one is found.
func recordFor(c *webClient, seen map[string]string, query, file string) string {
	c.t.Helper()
	var list evidenceList
	c.getJSON("/api/evidence?"+query, &list)
	for _, r := range list.Records {
		f, ok := seen[r.ID]
		if !ok {
			var det evidenceDetail
			c.getJSON("/api/evidence/"+r.ID, &det)
			var res publish.Result
			json.Unmarshal(det.Record.Result, &res)
			f, seen[r.ID] = res.File, res.File
		}
		if f == file {
			return r.ID
		}
	}
	return ""
}

// lastVersion is the model version of the newest result of camera.
func lastVersion(t *testing.T, sub *testbroker.Subscriber, camera string) string {
	rs := results(t, sub, camera)
	if len(rs) == 0 {
		return ""
	}
	return rs[len(rs)-1].Model.Version
}

// Who gets what from every endpoint of gnld's listener with accounts on:
// nobody, a viewer, an operator and an admin. Then an operator teaches a
// false alarm: the answer, the state file and the results on MQTT say the
// camera serves the new version, and undo brings the old one back. No
// password, session cookie or CSRF token is ever in the log, the audit
// log or on MQTT.
func TestReviewAccessByRole(t *testing.T) {
	if testing.Short() {
		t.Skip("starts gnld with the default bundle; skipped with -short")
	}
	start := time.Now()
	dir, _ := mtdSamples(t, 1, "good", "break", "fray")
	mtdImage(t, dir, "good", reviewFalseAlarm)
	mtdImage(t, dir, "good", reviewFalseAlarm2)
	usersFile, pw := reviewUsers(t, map[string]auth.Role{"vera": auth.Viewer, "otto": auth.Operator, "ada": auth.Admin})
	tmp := t.TempDir()
	audit, teachDir := filepath.Join(tmp, "audit.jsonl"), filepath.Join(tmp, "taught")
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	base := fmt.Sprintf("http://127.0.0.1:%d", testbroker.FreePort(t))
	d := startReviewDaemon(t, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "line1=dir:" + dir, "GNLD_CAMERA_LINE1_LOOP": "true", "GNLD_CAMERA_LINE1_FPS": "4",
		"GNLD_CAMERA_LINE1_THRESHOLD": reviewThreshold, "GNLD_MODEL_DIR": defaultBundle,
		"GNLD_HTTP_ADDR": strings.TrimPrefix(base, "http://"), "GNLD_HTTP_USERS": usersFile, "GNLD_HTTP_AUDIT": audit,
		"GNLD_EVIDENCE_DIR": filepath.Join(tmp, "evidence"), "GNLD_EVIDENCE_NORMAL_EVERY": "1", "GNLD_TEACH_DIR": teachDir,
		"GNLD_EXIT_WHEN_DONE": "false", "GNLD_LOG_LEVEL": "info",
	}))

	nobody := newWebClient(t, base, nil)
	d.wait(30*time.Second, "the listener", func() bool {
		resp, err := nobody.hc.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	clients := map[string]*webClient{"nobody": nobody}
	for _, name := range []string{"vera", "otto", "ada"} {
		clients[name] = newWebClient(t, base, nil)
		clients[name].login(name, pw[name])
	}
	vera, otto, ada := clients["vera"], clients["otto"], clients["ada"]
	// A wrong password: refused, and (below) never written anywhere.
	wrong := secret(t, "Wrong")
	if a := nobody.request("POST", "/login", map[string]string{"name": "otto", "password": wrong},
		map[string]string{"Accept": "application/json"}); a.code != http.StatusUnauthorized {
		t.Errorf("login with a wrong password: %s, want 401", a)
	}

	// A flagged false alarm kept as evidence, and a frame on the live page.
	var id string
	files := map[string]string{}
	d.wait(40*time.Second, "a kept record of "+reviewFalseAlarm, func() bool {
		id = recordFor(vera, files, "verdict=anomalous", reviewFalseAlarm)
		return id != ""
	})
	d.wait(10*time.Second, "a frame on the live page", func() bool {
		vera.api("GET", "/api/state", nil, false) // the page keeps frames while someone watches
		return vera.api("GET", "/api/cameras/line1/frame.jpg", nil, false).code == http.StatusOK
	})
	t.Logf("record %s is %s, flagged (%s since start)", id, reviewFalseAlarm, time.Since(start).Round(time.Millisecond))

	// Reads: who gets what.
	roleOf := map[string]auth.Role{"vera": auth.Viewer, "otto": auth.Operator, "ada": auth.Admin}
	reads := []struct {
		path  string
		min   auth.Role // 0: open to anyone
		page  bool      // nobody is sent to the login page rather than answered 401
		magic string    // the answer starts so, when 200
	}{
		{"/", auth.Viewer, true, "<!doctype html>"},
		{"/page/review.html", auth.Viewer, true, "<!doctype html>"},
		{"/api/state", auth.Viewer, false, "{"},
		{"/api/events", auth.Viewer, false, ""},
		{"/api/cameras/line1/frame.jpg", auth.Viewer, false, "\xff\xd8"},
		{"/api/evidence", auth.Viewer, false, "{"},
		{"/api/evidence/" + id, auth.Viewer, false, "{"},
		{"/api/evidence/" + id + "/frame.jpg", auth.Viewer, false, "\xff\xd8"},
		{"/api/evidence/" + id + "/heatmap.png", auth.Viewer, false, "\x89PNG"},
		{"/api/whoami", auth.Viewer, false, "{"},
		{"/api/users", auth.Admin, false, `{"users":`},
		{"/metrics", 0, false, "# HELP"},
		{"/healthz", 0, false, "ok"},
		{"/readyz", 0, false, "ready"},
	}
	for _, who := range []string{"nobody", "vera", "otto", "ada"} {
		c := clients[who]
		for _, r := range reads {
			hdr := map[string]string{}
			if !r.page {
				hdr["Accept"] = "application/json"
			}
			a := c.request("GET", r.path, nil, hdr)
			want := http.StatusOK
			switch {
			case r.min == 0:
			case who == "nobody" && r.page:
				want = http.StatusSeeOther
			case who == "nobody":
				want = http.StatusUnauthorized
			case roleOf[who] < r.min:
				want = http.StatusForbidden
			}
			switch {
			case a.code != want:
				t.Errorf("%s GET %s: %s, want %d", who, r.path, a, want)
			case want == http.StatusSeeOther && !strings.HasPrefix(a.header.Get("Location"), "/login?next="):
				t.Errorf("%s GET %s: redirected to %q, want the login page", who, r.path, a.header.Get("Location"))
			case want == http.StatusOK && r.path == "/api/events" && a.header.Get("Content-Type") != "text/event-stream":
				t.Errorf("%s GET /api/events: Content-Type %q", who, a.header.Get("Content-Type"))
			case want == http.StatusOK && !bytes.HasPrefix(a.body, []byte(r.magic)):
				t.Errorf("%s GET %s: %s, want an answer starting %q", who, r.path, a, r.magic)
			}
		}
	}

	// Writes refused: to nobody (401), to a role below the one needed
	// (403, CSRF token or not), and to the right role without the CSRF
	// token or from another origin (403). None of them changes anything.
	writes := []struct {
		path string
		body any
		min  auth.Role
	}{
		{"/api/evidence/" + id + "/mark", map[string]string{"kind": evidence.MarkFalseAlarm}, auth.Operator},
		{"/api/evidence/" + id + "/teach", nil, auth.Operator},
		{"/api/cameras/line1/teach/undo", nil, auth.Operator},
		{"/api/users", map[string]string{"name": "newbie", "role": "viewer", "password": secret(t, "Refused")}, auth.Admin},
	}
	for _, w := range writes {
		if a := nobody.api("POST", w.path, w.body, false); a.code != http.StatusUnauthorized {
			t.Errorf("nobody POST %s: %s, want 401", w.path, a)
		}
		for _, who := range []string{"vera", "otto", "ada"} {
			c := clients[who]
			if roleOf[who] < w.min {
				for _, withCSRF := range []bool{false, true} {
					if a := c.api("POST", w.path, w.body, withCSRF); a.code != http.StatusForbidden {
						t.Errorf("%s POST %s (CSRF token sent: %v): %s, want 403", who, w.path, withCSRF, a)
					}
				}
				continue
			}
			if a := c.api("POST", w.path, w.body, false); a.code != http.StatusForbidden || !strings.Contains(string(a.body), "CSRF") {
				t.Errorf("%s POST %s without the CSRF token: %s, want 403", who, w.path, a)
			}
			a := c.request("POST", w.path, w.body, map[string]string{"Accept": "application/json", "X-CSRF-Token": c.csrf,
				"Origin": "http://evil.example"})
			if a.code != http.StatusForbidden {
				t.Errorf("%s POST %s from another origin: %s, want 403", who, w.path, a)
			}
		}
	}
	var det evidenceDetail
	vera.getJSON("/api/evidence/"+id, &det)
	if det.Record.Mark != nil || det.Taught || !det.CanMark || !det.CanTeach {
		t.Fatalf("after refused writes: mark %+v, taught %v, can_mark %v, can_teach %v; want no mark, not taught, both allowed",
			det.Record.Mark, det.Taught, det.CanMark, det.CanTeach)
	}

	// The admin adds an account, with the CSRF token.
	newbie := secret(t, "PwNewbie")
	if a := ada.api("POST", "/api/users", map[string]string{"name": "newbie", "role": "viewer", "password": newbie}, true); a.code != http.StatusCreated {
		t.Errorf("admin POST /api/users: %s, want 201", a)
	}
	var users struct {
		Users []auth.User `json:"users"`
	}
	ada.getJSON("/api/users", &users)
	if len(users.Users) != 4 || strings.Contains(fmt.Sprint(users), "$2") {
		t.Errorf("GET /api/users: %+v, want 4 accounts and no hashes", users)
	}
	clients["newbie"] = newWebClient(t, base, nil)
	clients["newbie"].login("newbie", newbie)

	// Teaching: before it, the results name the bundle's version.
	var meta struct {
		Version string `json:"version"`
	}
	raw, _ := os.ReadFile(filepath.Join(defaultBundle, "model.json"))
	if err := json.Unmarshal(raw, &meta); err != nil || meta.Version == "" {
		t.Fatalf("%s/model.json: %v", defaultBundle, err)
	}
	d.wait(10*time.Second, "results on MQTT", func() bool { return lastVersion(t, sub, "line1") != "" })
	if v := lastVersion(t, sub, "line1"); v != meta.Version {
		t.Fatalf("results name model %s before teaching, want the bundle's %s", v, meta.Version)
	}
	// Teaching an unmarked frame is refused; the operator marks it, then
	// teaches it.
	if a := otto.api("POST", "/api/evidence/"+id+"/teach", nil, true); a.code != http.StatusConflict {
		t.Errorf("teaching an unmarked frame: %s, want 409", a)
	}
	if a := otto.api("POST", "/api/evidence/"+id+"/mark", map[string]string{"kind": "false_alarm", "note": "dust"}, true); a.code != http.StatusOK {
		t.Fatalf("operator marks: %s", a)
	}
	vera.getJSON("/api/evidence/"+id, &det)
	if m := det.Record.Mark; m == nil || m.Kind != evidence.MarkFalseAlarm || m.By != "otto" || m.Note != "dust" {
		t.Fatalf("the record's mark: %+v", m)
	}
	t0 := time.Now()
	a := otto.api("POST", "/api/evidence/"+id+"/teach", nil, true)
	if a.code != http.StatusOK {
		t.Fatalf("operator teaches: %s", a)
	}
	var rep teach.Report
	if err := json.Unmarshal(a.body, &rep); err != nil || len(rep.Frames) != 1 {
		t.Fatalf("teach answer %s: %v", a.body, err)
	}
	f := rep.Frames[0]
	t.Logf("taught in %s: %s -> %s, %d rows, score %.3f -> %.3f (threshold %.3f, normal %v)", time.Since(t0).Round(time.Millisecond),
		rep.From, rep.Version, f.Rows, f.ScoreBefore, f.ScoreAfter, f.Threshold, f.Normal)
	if rep.From != meta.Version || rep.Version == "" || rep.Version == rep.From || f.ID != id {
		t.Errorf("teach: from %q to %q for %q; want from %s to a new version for %s", rep.From, rep.Version, f.ID, meta.Version, id)
	}
	if !(f.ScoreAfter < f.ScoreBefore) || !(f.ScoreBefore >= f.Threshold) || !(f.ScoreAfter < f.Threshold) || !f.Normal ||
		strconv.FormatFloat(f.Threshold, 'f', 3, 64) != "5.200" {
		t.Errorf("teach: score %v -> %v against %v (normal %v); want a flagged frame made normal against the camera's threshold %s",
			f.ScoreBefore, f.ScoreAfter, f.Threshold, f.Normal, reviewThreshold)
	}
	// The state file names the new version's folder, which holds a bundle.
	readState := func() teachState {
		t.Helper()
		var st teachState
		raw, err := os.ReadFile(filepath.Join(teachDir, "line1", "state.json"))
		if err != nil || json.Unmarshal(raw, &st) != nil || len(st) != 1 {
			t.Fatalf("%s/line1/state.json: %v %s", teachDir, err, raw)
		}
		return st
	}
	for baseDir, tb := range readState() {
		if len(tb.Versions) != 1 || tb.Versions[0] != rep.Dir || filepath.Base(rep.Dir) != rep.Version || tb.Fingerprint == "" {
			t.Errorf("state.json: base %s: %+v; want one version, %s", baseDir, tb, rep.Dir)
		}
	}
	if _, err := os.Stat(filepath.Join(rep.Dir, "model.json")); err != nil {
		t.Errorf("the taught version's folder: %v", err)
	}
	// The results that follow name the new version; the record says so.
	d.wait(15*time.Second, "results of the taught version", func() bool { return lastVersion(t, sub, "line1") == rep.Version })
	vera.getJSON("/api/evidence/"+id, &det)
	if !det.Taught {
		t.Errorf("GET /api/evidence/%s: taught false while the camera serves %s", id, rep.Version)
	}
	// Undo: the bundle's version again, and nothing taught in the state.
	a = otto.api("POST", "/api/cameras/line1/teach/undo", nil, true)
	if a.code != http.StatusOK {
		t.Fatalf("operator undoes: %s", a)
	}
	d.wait(15*time.Second, "results of the bundle's version after undo", func() bool { return lastVersion(t, sub, "line1") == meta.Version })
	for baseDir, tb := range readState() {
		if len(tb.Versions) != 0 {
			t.Errorf("state.json after undo: base %s: %+v; want no versions", baseDir, tb)
		}
	}
	if a := otto.api("POST", "/api/cameras/line1/teach/undo", nil, true); a.code != http.StatusConflict {
		t.Errorf("a second undo: %s, want 409 (nothing taught)", a)
	}
	var versions []string
	for _, r := range results(t, sub, "line1") {
		if len(versions) == 0 || versions[len(versions)-1] != r.Model.Version {
			versions = append(versions, r.Model.Version)
		}
	}
	if len(versions) != 3 || versions[0] != meta.Version || versions[1] != rep.Version || versions[2] != meta.Version {
		t.Errorf("model versions of the results, in order: %v; want %s, %s, %s", versions, meta.Version, rep.Version, meta.Version)
	}

	// Secrets: every password, session cookie and CSRF token, nowhere.
	secrets := map[string]string{"wrong password": wrong, "newbie's password": newbie}
	for who, c := range clients {
		if who == "nobody" {
			continue
		}
		secrets[who+"'s session cookie"], secrets[who+"'s CSRF token"] = c.session(), c.csrf
		if p, ok := pw[who]; ok {
			secrets[who+"'s password"] = p
		}
	}
	log := d.stop()
	auditRaw, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	var mqttSaid strings.Builder
	for _, m := range sub.Messages() {
		fmt.Fprintf(&mqttSaid, "%s %s\n", m.Topic, m.Payload)
	}
	for what, s := range secrets {
		if len(s) < 16 {
			t.Fatalf("%s %q: too short to look for", what, s)
		}
		for where, text := range map[string]string{"gnld's log": log, "the audit log": string(auditRaw), "MQTT": mqttSaid.String()} {
			if strings.Contains(text, s) {
				t.Errorf("%s found in %s", what, where)
			}
		}
	}
	// The audit log has what was done, by whom.
	actions := map[string][]string{}
	for line := range strings.Lines(string(auditRaw)) {
		var l struct {
			User   string `json:"user"`
			Action string `json:"action"`
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		actions[l.Action] = append(actions[l.Action], l.User)
	}
	for action, want := range map[string]string{"login": "otto", "mark": "otto", "teach": "otto", "teach_undo": "otto", "user_add": "ada"} {
		if !strings.Contains(strings.Join(actions[action], " "), want) {
			t.Errorf("audit log: %s by %v, want one by %s", action, actions[action], want)
		}
	}
	if len(actions["login_failed"]) != 1 || len(actions["mark"]) != 1 || len(actions["teach"]) != 1 {
		t.Errorf("audit log: %d failed logins, %d marks, %d teachings; want 1 each (refused writes are not actions)",
			len(actions["login_failed"]), len(actions["mark"]), len(actions["teach"]))
	}
	if !strings.Contains(log, "teach: frame taught") || !strings.Contains(log, "teach: undone") {
		t.Errorf("no teaching or undo in gnld's log:\n%s", log)
	}
	t.Logf("%d result messages, %d audit lines; done in %s", len(results(t, sub, "line1")), strings.Count(string(auditRaw), "\n"),
		time.Since(start).Round(time.Millisecond))
}

// selfSigned writes a self-signed ECDSA certificate for 127.0.0.1 and its
// key into dir, and returns a pool that trusts it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "gnld review test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// GNLD_HTTP_TLS_*: the listener speaks HTTPS with the certificate given,
// the session cookie is Secure, and plain HTTP to the port gets nothing
// served.
func TestReviewTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts gnld; skipped with -short")
	}
	dir, _ := mtdSamples(t, 1, "good")
	usersFile, pw := reviewUsers(t, map[string]auth.Role{"otto": auth.Operator})
	certFile, keyFile, pool := selfSigned(t, t.TempDir())
	tmp := t.TempDir()
	b := testbroker.Start(t)
	hostPort := fmt.Sprintf("127.0.0.1:%d", testbroker.FreePort(t))
	d := startReviewDaemon(t, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "line1=dir:" + dir, "GNLD_EXIT_WHEN_DONE": "false", "GNLD_LOG_LEVEL": "info",
		"GNLD_HTTP_ADDR": hostPort, "GNLD_HTTP_USERS": usersFile, "GNLD_HTTP_TLS_CERT": certFile, "GNLD_HTTP_TLS_KEY": keyFile,
		"GNLD_EVIDENCE_DIR": filepath.Join(tmp, "evidence"),
	}))
	trusting := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer trusting.CloseIdleConnections()
	c := newWebClient(t, "https://"+hostPort, trusting)
	d.wait(30*time.Second, "the HTTPS listener", func() bool {
		resp, err := c.hc.Get(c.base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if a := c.request("GET", "/page/review.html", nil, nil); a.code != http.StatusSeeOther {
		t.Errorf("GET /page/review.html over HTTPS before login: %s, want 303", a)
	}
	a := c.request("POST", "/login", map[string]string{"name": "otto", "password": pw["otto"]}, map[string]string{"Accept": "application/json"})
	if a.code != http.StatusOK {
		t.Fatalf("login over HTTPS: %s", a)
	}
	resp := &http.Response{Header: a.header}
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == auth.CookieName {
			cookie = ck
		}
	}
	if cookie == nil || !cookie.Secure || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Errorf("session cookie %+v; want Secure, HttpOnly, SameSite=Strict", cookie)
	}
	if a := c.request("GET", "/api/whoami", nil, nil); a.code != http.StatusOK || !strings.Contains(string(a.body), `"otto"`) {
		t.Errorf("GET /api/whoami over HTTPS with the cookie: %s", a)
	}
	// A client that does not trust the certificate refuses it.
	if resp, err := http.Get(c.base + "/healthz"); err == nil {
		resp.Body.Close()
		t.Errorf("HTTPS with a client that does not trust the certificate: %s, want a certificate error", resp.Status)
	} else if !errors.As(err, new(x509.UnknownAuthorityError)) {
		t.Logf("untrusting client: %v", err)
	}
	// Plain HTTP to the same port: no page, no probe.
	plain := &http.Client{Timeout: 10 * time.Second}
	resp, err := plain.Get("http://" + hostPort + "/healthz")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the HTTPS port: %s %q, want an error or 400", resp.Status, body)
		}
		t.Logf("plain HTTP to the HTTPS port: %s %q", resp.Status, strings.TrimSpace(string(body)))
	} else {
		t.Logf("plain HTTP to the HTTPS port: %v", err)
	}
	if log := d.stop(); !strings.Contains(log, "tls=true") {
		t.Errorf("the log does not say the listener is HTTPS:\n%s", log)
	}
}

// The flow in headless Chromium: log in, open a flagged part,
// mark it a false alarm, teach, and see the same frame's new score below
// the threshold; then undo. Screenshots are kept beside the page test's
// (out/page-test/review-*.png) and their paths logged.
func TestReviewInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts gnld and a browser; skipped with -short")
	}
	browser := chromium(t)
	start := time.Now()
	dir := t.TempDir()
	mtdImage(t, dir, "good", reviewFalseAlarm)
	mtdImage(t, dir, "good", reviewFalseAlarm2)
	usersFile, pw := reviewUsers(t, map[string]auth.Role{"otto": auth.Operator})
	tmp := t.TempDir()
	teachDir := filepath.Join(tmp, "taught")
	b := testbroker.Start(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", testbroker.FreePort(t))
	// The folder is read once: two frames, both flagged at the camera's
	// threshold, and no frame after the teaching.
	d := startReviewDaemon(t, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "line1=dir:" + dir, "GNLD_CAMERA_LINE1_THRESHOLD": reviewThreshold, "GNLD_MODEL_DIR": defaultBundle,
		"GNLD_HTTP_ADDR": strings.TrimPrefix(base, "http://"), "GNLD_HTTP_USERS": usersFile,
		"GNLD_HTTP_AUDIT": filepath.Join(tmp, "audit.jsonl"), "GNLD_EVIDENCE_DIR": filepath.Join(tmp, "evidence"),
		"GNLD_TEACH_DIR": teachDir, "GNLD_EXIT_WHEN_DONE": "false", "GNLD_LOG_LEVEL": "info",
	}))
	// The record to open, found through the API by a session of its own.
	api := newWebClient(t, base, nil)
	d.wait(30*time.Second, "the listener", func() bool {
		resp, err := api.hc.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	api.login("otto", pw["otto"])
	var id string
	files := map[string]string{}
	d.wait(40*time.Second, "both frames kept as flagged", func() bool {
		var list evidenceList
		api.getJSON("/api/evidence?verdict=anomalous", &list)
		if len(list.Records) < 2 {
			return false
		}
		id = recordFor(api, files, "verdict=anomalous", reviewFalseAlarm)
		return id != ""
	})
	t.Logf("record %s is %s, flagged (%s since start)", id, reviewFalseAlarm, time.Since(start).Round(time.Millisecond))

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(browser), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1100, 900),
		chromedp.Flag("headless", true), chromedp.Flag("no-sandbox", true), chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
	}
	actx, stopAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer stopAlloc()
	bctx, stopBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer stopBrowser()
	// The first call starts the browser and must not have a deadline.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/page/review.html")); err != nil {
		t.Fatalf("browser: %v", err)
	}
	wctx, stopTimer := context.WithTimeout(bctx, 50*time.Second)
	defer stopTimer()

	shots := filepath.Dir(screenshotPath(t))
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	shoot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(wctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		path := filepath.Join(shots, "review-"+name+".png")
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot (%s): %s", name, path)
	}
	// failed keeps the page as it was and fails the test.
	failed := func(format string, args ...any) {
		t.Helper()
		path := filepath.Join(shots, "review-failed.png")
		if png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100)); err == nil {
			os.WriteFile(path, png, 0o644)
		}
		text, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ''`))
		t.Fatalf(format+" (page as it was: %s, saying %q)", append(args, path, text)...)
	}
	// poll waits for a JavaScript expression to be truthy and returns it
	// as a string.
	poll := func(what, expr string, timeout time.Duration) string {
		t.Helper()
		v, err := chromedp.Run(wctx, chromedp.Poll[string](expr,
			chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
		if err != nil {
			failed("waiting for %s: %v", what, err)
		}
		return v
	}

	// Sent to the login page; logging in comes back to the review page.
	loc, err := chromedp.Run(wctx, chromedp.Location())
	if err != nil || !strings.HasPrefix(loc, base+"/login?next=") {
		failed("opening the review page logged out: at %q (%v), want the login page", loc, err)
	}
	if err := chromedp.Do(wctx, chromedp.SendKeys(chromedp.CSS("#name"), "otto"),
		chromedp.SendKeys(chromedp.CSS("#password"), pw["otto"])); err != nil {
		failed("filling in the login form: %v", err)
	}
	if _, err := chromedp.RunResponse(wctx, chromedp.Click(chromedp.CSS(`button[type=submit]`))); err != nil {
		failed("logging in: %v", err)
	}
	if loc, err = chromedp.Run(wctx, chromedp.Location()); err != nil || loc != base+"/page/review.html" {
		text, _ := chromedp.Run(wctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ''`))
		if strings.Contains(text, `Origin "null"`) {
			t.Log(`the login form came with "Origin: null": Chromium sends that for a form posted from a page ` +
				`served with "Referrer-Policy: no-referrer" (the login page, internal/auth's renderLogin)`)
		}
		failed("after logging in: at %q (%v), want %s/page/review.html", loc, err, base)
	}
	thumb := fmt.Sprintf(`.thumb[data-id="%s"]`, id)
	poll("the gallery with its images", `(() => {
		const imgs = [...document.querySelectorAll('.thumb img')];
		return !!document.querySelector('`+thumb+`') && /otto \(operator\)/.test(document.querySelector('#who').textContent) &&
			imgs.length >= 4 && imgs.every(i => i.complete && i.naturalWidth > 0) && document.querySelector('#count').textContent;
	})()`, 20*time.Second)
	shoot("gallery")

	// The flagged part, opened.
	if err := chromedp.Do(wctx, chromedp.Click(chromedp.CSS(thumb))); err != nil {
		failed("opening the record: %v", err)
	}
	poll("the detail view", `(() => {
		const d = document.querySelector('#detail'), f = d.querySelector('img.frame'), h = d.querySelector('img.heat');
		return d.open && d.querySelector('.score').textContent !== '' && f.complete && f.naturalWidth > 0 &&
			h.complete && h.naturalWidth > 0 && !d.querySelector('.false-alarm').hidden && 'open';
	})()`, 10*time.Second)
	type view struct {
		Verdict   string `json:"verdict"`
		Score     string `json:"score"`
		Threshold string `json:"threshold"`
		Marked    string `json:"marked"`
		Teach     bool   `json:"teach"` // the teach button is enabled
	}
	read := func() view {
		t.Helper()
		v, err := chromedp.Run(wctx, chromedp.Evaluate[view](`(() => {
			const d = document.querySelector('#detail'), text = (s) => d.querySelector(s).textContent.trim();
			return {verdict: text('.verdict'), score: text('.score'), threshold: text('.threshold'), marked: text('.marked'),
				teach: !d.querySelector('.teach').hidden && !d.querySelector('.teach').disabled};
		})()`))
		if err != nil {
			failed("reading the detail view: %v", err)
		}
		return v
	}
	v := read()
	score, _ := strconv.ParseFloat(v.Score, 64)
	if v.Verdict != "anomalous" || v.Threshold != "5.200" || !(score >= 5.2) || v.Marked != "not yet" || v.Teach {
		failed("detail view before marking: %+v; want anomalous, threshold 5.200, a score above it, not marked, teach disabled", v)
	}
	shoot("detail")

	// Marked a false alarm: the teach button comes on.
	if err := chromedp.Do(wctx, chromedp.Click(chromedp.CSS("#detail button.false-alarm"))); err != nil {
		failed("clicking false alarm: %v", err)
	}
	poll("the mark", `(() => { const d = document.querySelector('#detail');
		return d.querySelector('.result').textContent === 'marked false alarm' && !d.querySelector('.teach').disabled && 'marked'; })()`,
		10*time.Second)
	if v = read(); !strings.HasPrefix(v.Marked, "false alarm (otto,") || !v.Teach {
		failed("detail view after marking: %+v; want marked a false alarm by otto, teach enabled", v)
	}

	// Taught: the message says the frame's new score, under the threshold,
	// and the camera now serves a taught version (undo is offered).
	if err := chromedp.Do(wctx, chromedp.Click(chromedp.CSS("#detail button.teach"))); err != nil {
		failed("clicking teach: %v", err)
	}
	msg := poll("the teaching's result", `(() => { const d = document.querySelector('#detail'), r = d.querySelector('.result').textContent;
		return r.startsWith('taught:') && !d.querySelector('.undo').hidden && r; })()`, 40*time.Second)
	t.Logf("the page says: %s", msg)
	m := regexp.MustCompile(`^taught: model (\S+) → (\S+); this frame now scores ([0-9.]+) \(was ([0-9.]+), threshold ([0-9.]+)\): normal$`).
		FindStringSubmatch(msg)
	if m == nil {
		failed("teaching said %q; want the frame's new score, its old one and the threshold, and normal", msg)
	}
	after, _ := strconv.ParseFloat(m[3], 64)
	before, _ := strconv.ParseFloat(m[4], 64)
	threshold, _ := strconv.ParseFloat(m[5], 64)
	if !(after < threshold) || !(after < before) || m[5] != v.Threshold || m[1] == m[2] {
		failed("taught: score %s -> %s against threshold %s (the detail view showed %s against %s); want below the threshold",
			m[4], m[3], m[5], v.Score, v.Threshold)
	}
	shoot("taught")
	var st teachState
	raw, err := os.ReadFile(filepath.Join(teachDir, "line1", "state.json"))
	if err != nil || json.Unmarshal(raw, &st) != nil || len(st) != 1 {
		t.Fatalf("state.json after teaching: %v %s", err, raw)
	}
	for _, tb := range st {
		if len(tb.Versions) != 1 || filepath.Base(tb.Versions[0]) != m[2] {
			t.Errorf("state.json after teaching: %+v, want version %s", tb, m[2])
		}
	}

	// Undo, from the page.
	if err := chromedp.Do(wctx, chromedp.Click(chromedp.CSS("#detail button.undo"))); err != nil {
		failed("clicking undo: %v", err)
	}
	undone := poll("the undo", `(() => { const r = document.querySelector('#detail .result').textContent;
		return r.startsWith('undone:') && r; })()`, 10*time.Second)
	t.Logf("the page says: %s", undone)
	raw, _ = os.ReadFile(filepath.Join(teachDir, "line1", "state.json"))
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	for _, tb := range st {
		if len(tb.Versions) != 0 {
			t.Errorf("state.json after undo: %+v, want no versions", tb)
		}
	}
	t.Logf("done in %s", time.Since(start).Round(time.Millisecond))
}
