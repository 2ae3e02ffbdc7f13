package auth

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestMain(m *testing.M) {
	HashCost = bcrypt.MinCost // real bcrypt, fast
	os.Exit(m.Run())
}

// Passwords distinctive enough to find in a log.
const (
	pwRoot = "Pw-root-4711-admin"
	pwOtto = "Pw-otto-0815-operator"
	pwVera = "Pw-vera-1234-viewer"
)

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// lockedBuffer is the slog output, written from the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fixture is a real HTTP server with Auth on it, three accounts (root:
// admin, otto: operator, vera: viewer) and a few guarded endpoints:
//
//	GET  /            viewer (a page: redirects to /login)
//	GET  /api/state   viewer
//	POST /api/mark    operator; audits "mark"
//	POST /teach       operator (not under /api/)
type fixture struct {
	t         *testing.T
	a         *Auth
	srv       *httptest.Server
	clock     *clock
	logs      *lockedBuffer
	dir       string
	usersPath string
	auditPath string

	mu      sync.Mutex
	secrets []string // passwords and tokens that must never be logged
}

func newFixture(t *testing.T, opt Options) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: &clock{t: time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC)}, logs: &lockedBuffer{}, dir: t.TempDir()}
	f.usersPath = filepath.Join(f.dir, "users.json")
	u := NewUsers(f.usersPath)
	for _, a := range []struct {
		name string
		role Role
		pw   string
	}{{"root", Admin, pwRoot}, {"otto", Operator, pwOtto}, {"vera", Viewer, pwVera}} {
		if err := u.Add(a.name, a.role, a.pw); err != nil {
			t.Fatal(err)
		}
		f.secret(a.pw)
	}
	if err := u.Save(); err != nil {
		t.Fatal(err)
	}
	users, err := LoadUsers(f.usersPath)
	if err != nil {
		t.Fatal(err)
	}
	if opt.AuditPath == "-" {
		opt.AuditPath = ""
	} else {
		f.auditPath = filepath.Join(f.dir, "audit.log")
		opt.AuditPath = f.auditPath
	}
	opt.Now = f.clock.Now
	log := slog.New(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f.a, err = New(users, opt, log)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	f.a.Register(mux)
	hello := func(w http.ResponseWriter, r *http.Request) {
		u, ok := UserFrom(r.Context())
		if !ok {
			t.Error("no user in the context")
		}
		io.WriteString(w, "hello "+u.Name)
	}
	mux.Handle("GET /{$}", f.a.Require(Viewer, http.HandlerFunc(hello)))
	mux.Handle("GET /api/state", f.a.Require(Viewer, http.HandlerFunc(hello)))
	mux.Handle("POST /api/mark", f.a.Require(Operator, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// a careless caller: the password must still not reach the log
		f.a.Audit(r, "mark", map[string]any{"camera": "line1", "seq": 7, "Password": pwOtto})
		io.WriteString(w, "marked")
	})))
	mux.Handle("POST /teach", f.a.Require(Operator, http.HandlerFunc(hello)))
	f.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		f.srv.Close()
		f.a.Close()
		f.checkNoSecrets()
	})
	return f
}

func (f *fixture) secret(s string) {
	f.mu.Lock()
	f.secrets = append(f.secrets, s)
	f.mu.Unlock()
}

// checkNoSecrets fails when a password, a hash, a session token or a CSRF
// token seen during the test is in the audit file or the log.
func (f *fixture) checkNoSecrets() {
	t := f.t
	t.Helper()
	var audit []byte
	if f.auditPath != "" {
		var err error
		if audit, err = os.ReadFile(f.auditPath); err != nil {
			t.Errorf("audit log: %v", err)
		}
	}
	secrets := append([]string(nil), f.secrets...)
	if u, err := LoadUsers(f.usersPath); err == nil {
		for _, a := range u.snapshot() {
			secrets = append(secrets, a.Hash)
		}
	}
	logs := f.logs.String()
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(logs, s) {
			t.Errorf("the log holds a secret (%.6s...):\n%s", s, logs)
		}
		if bytes.Contains(audit, []byte(s)) {
			t.Errorf("the audit log holds a secret (%.6s...):\n%s", s, audit)
		}
	}
}

// resp is an answer, its body read.
type resp struct {
	*http.Response
	body string
}

// do sends a request with the session token (may be "") and headers given
// as "Key: value". A body starting with "{" is JSON, another is a form.
func (f *fixture) do(method, path, token, body string, hdr ...string) resp {
	f.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	switch {
	case strings.HasPrefix(body, "{"):
		req.Header.Set("Content-Type", "application/json")
	case body != "":
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if token != "" {
		req.AddCookie(&http.Cookie{Name: CookieName, Value: token})
	}
	for _, h := range hdr {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := c.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, c := range res.Cookies() {
		if c.Name == CookieName && c.Value != "" {
			f.secret(c.Value)
		}
	}
	return resp{res, string(b)}
}

func (f *fixture) want(r resp, code int) {
	f.t.Helper()
	if r.StatusCode != code {
		f.t.Fatalf("%s %s: status %d, want %d: %s", r.Request.Method, r.Request.URL.Path, r.StatusCode, code, r.body)
	}
}

// client is a logged-in browser.
type client struct {
	token, csrf string
}

func jsonBody(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func (f *fixture) tryLogin(name, pw string) resp {
	return f.do("POST", "/login", "", jsonBody(map[string]string{"name": name, "password": pw}), "Accept: application/json")
}

func (f *fixture) login(name, pw string) client {
	f.t.Helper()
	r := f.tryLogin(name, pw)
	f.want(r, http.StatusOK)
	var w struct{ User, Role, CSRF string }
	if err := json.Unmarshal([]byte(r.body), &w); err != nil {
		f.t.Fatal(err)
	}
	if w.User != name || w.CSRF == "" {
		f.t.Fatalf("login answer %s", r.body)
	}
	f.secret(w.CSRF)
	s := client{csrf: w.CSRF}
	for _, c := range r.Cookies() {
		if c.Name == CookieName {
			s.token = c.Value
		}
	}
	if s.token == "" {
		f.t.Fatal("login set no session cookie")
	}
	return s
}

// post sends a write with the session's CSRF token.
func (f *fixture) post(s client, method, path, body string, hdr ...string) resp {
	f.t.Helper()
	return f.do(method, path, s.token, body, append([]string{"X-CSRF-Token: " + s.csrf}, hdr...)...)
}

func sessionCookie(t *testing.T, r resp) *http.Cookie {
	t.Helper()
	for _, c := range r.Cookies() {
		if c.Name == CookieName {
			return c
		}
	}
	t.Fatalf("no %s cookie in %v", CookieName, r.Header["Set-Cookie"])
	return nil
}

func TestLogin(t *testing.T) {
	f := newFixture(t, Options{})

	r := f.tryLogin("otto", pwOtto)
	f.want(r, http.StatusOK)
	var w map[string]string
	json.Unmarshal([]byte(r.body), &w)
	if w["user"] != "otto" || w["role"] != "operator" || len(w["csrf"]) < 40 {
		t.Errorf("login answer %s", r.body)
	}
	f.secret(w["csrf"])
	c := sessionCookie(t, r)
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Secure {
		t.Errorf("cookie %s: want HttpOnly, SameSite=Strict, Path=/, not Secure without TLS", c.Raw)
	}
	if len(c.Value) != 43 { // 32 bytes, base64url
		t.Errorf("token of %d characters", len(c.Value))
	}
	if c.Value == w["csrf"] {
		t.Error("the CSRF token is the session token")
	}
	f.want(f.do("GET", "/api/whoami", c.Value, ""), http.StatusOK)

	for _, bad := range [][2]string{{"otto", "wrong-password-1"}, {"nobody", pwOtto}, {"", ""}, {pwVera, pwVera}} {
		r := f.tryLogin(bad[0], bad[1])
		f.want(r, http.StatusUnauthorized)
		if len(r.Cookies()) != 0 {
			t.Errorf("failed login %q set a cookie", bad[0])
		}
	}
	// a browser's form: the page again, with the error, without the password
	r = f.do("POST", "/login", "", url.Values{"name": {"vera"}, "password": {"not-" + pwVera}, "next": {"/x"}}.Encode())
	f.want(r, http.StatusUnauthorized)
	if !strings.Contains(r.body, "Wrong name or password") || !strings.Contains(r.body, `value="/x"`) || strings.Contains(r.body, pwVera) {
		t.Errorf("failed form login page:\n%s", r.body)
	}

	// form login redirects to a local next, never elsewhere
	f.clock.Add(time.Minute) // past the five failures above
	for next, loc := range map[string]string{
		"/api/state?camera=a": "/api/state?camera=a", "": "/", "//evil.example/": "/",
		"https://evil.example/": "/", `/\evil.example`: "/", "javascript:alert(1)": "/", "/a\r\nX: y": "/",
	} {
		r := f.do("POST", "/login", "", url.Values{"name": {"vera"}, "password": {pwVera}, "next": {next}}.Encode())
		f.want(r, http.StatusSeeOther)
		if got := r.Header.Get("Location"); got != loc {
			t.Errorf("next %q: Location %q, want %q", next, got, loc)
		}
		sessionCookie(t, r)
	}

	// the form: embedded, no external assets, next escaped
	r = f.do("GET", "/login?next="+url.QueryEscape(`/"><script>`), "", "")
	f.want(r, http.StatusOK)
	if !strings.Contains(r.body, `<form method="post" action="/login">`) || strings.Contains(r.body, "<script>") ||
		strings.Contains(r.body, "http://") || strings.Contains(r.body, "https://") || strings.Contains(r.body, "src=") {
		t.Errorf("login page:\n%s", r.body)
	}
	if r.Header.Get("Content-Security-Policy") == "" {
		t.Error("login page without a Content-Security-Policy")
	}

	// a login from another site is refused
	r = f.do("POST", "/login", "", url.Values{"name": {"vera"}, "password": {pwVera}}.Encode(), "Origin: https://evil.example")
	f.want(r, http.StatusForbidden)
}

func TestSecureCookie(t *testing.T) {
	f := newFixture(t, Options{Secure: true})
	r := f.tryLogin("vera", pwVera)
	f.want(r, http.StatusOK)
	if c := sessionCookie(t, r); !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("cookie %s: want Secure, HttpOnly, SameSite=Strict", c.Raw)
	}
	var w map[string]string
	json.Unmarshal([]byte(r.body), &w)
	f.secret(w["csrf"])
}

func TestRequire(t *testing.T) {
	f := newFixture(t, Options{})
	vera, otto := f.login("vera", pwVera), f.login("otto", pwOtto)
	host := strings.TrimPrefix(f.srv.URL, "http://")

	// nobody
	r := f.do("GET", "/", "", "")
	f.want(r, http.StatusSeeOther)
	if loc := r.Header.Get("Location"); loc != "/login?next=%2F" {
		t.Errorf("Location %q", loc)
	}
	r = f.do("GET", "/?camera=a", "", "")
	if loc := r.Header.Get("Location"); loc != "/login?next="+url.QueryEscape("/?camera=a") {
		t.Errorf("Location %q", loc)
	}
	f.want(f.do("GET", "/", "", "", "Accept: application/json"), http.StatusUnauthorized)
	r = f.do("GET", "/api/state", "", "")
	f.want(r, http.StatusUnauthorized)
	if !strings.Contains(r.body, `"error"`) {
		t.Errorf("401 body %q", r.body)
	}
	f.want(f.do("POST", "/api/mark", "", "{}"), http.StatusUnauthorized)
	f.want(f.do("POST", "/teach", "", "a=b"), http.StatusSeeOther)
	f.want(f.do("GET", "/api/whoami", "", ""), http.StatusUnauthorized)
	// a made-up token: 401, and the cookie is dropped
	r = f.do("GET", "/api/state", "made-up-token", "")
	f.want(r, http.StatusUnauthorized)
	if c := sessionCookie(t, r); c.MaxAge >= 0 {
		t.Errorf("stale cookie not cleared: %s", c.Raw)
	}

	// a viewer sees, but does not write
	r = f.do("GET", "/", vera.token, "")
	f.want(r, http.StatusOK)
	if r.body != "hello vera" {
		t.Errorf("body %q", r.body)
	}
	f.want(f.post(vera, "POST", "/api/mark", "{}"), http.StatusForbidden)
	f.want(f.post(vera, "POST", "/teach", "a=b"), http.StatusForbidden)

	// an operator writes with the CSRF token only
	f.want(f.do("POST", "/api/mark", otto.token, "{}"), http.StatusForbidden)
	f.want(f.do("POST", "/api/mark", otto.token, "{}", "X-CSRF-Token: "+vera.csrf), http.StatusForbidden)
	f.want(f.do("POST", "/api/mark", otto.token, "{}", "X-CSRF-Token: "+otto.csrf[:20]), http.StatusForbidden)
	r = f.do("POST", "/api/mark", otto.token, "{}", "X-CSRF-Token: "+otto.csrf)
	f.want(r, http.StatusOK)
	if r.body != "marked" {
		t.Errorf("body %q", r.body)
	}
	r = f.do("POST", "/teach", otto.token, url.Values{"csrf": {otto.csrf}, "a": {"b"}}.Encode())
	f.want(r, http.StatusOK)
	r = f.do("POST", "/teach", otto.token, url.Values{"csrf": {"nope"}}.Encode())
	f.want(r, http.StatusForbidden)
	if !strings.Contains(r.body, "CSRF") {
		t.Errorf("403 body %q does not say why", r.body)
	}
	// a CSRF token in the URL is not taken
	f.want(f.do("POST", "/teach?csrf="+url.QueryEscape(otto.csrf), otto.token, url.Values{"a": {"b"}}.Encode()), http.StatusForbidden)

	// same-origin only
	f.want(f.post(otto, "POST", "/api/mark", "{}", "Origin: http://evil.example"), http.StatusForbidden)
	f.want(f.post(otto, "POST", "/api/mark", "{}", "Origin: null"), http.StatusForbidden)
	f.want(f.post(otto, "POST", "/api/mark", "{}", "Sec-Fetch-Site: cross-site"), http.StatusForbidden)
	f.want(f.post(otto, "POST", "/api/mark", "{}", "Origin: http://"+host, "Sec-Fetch-Site: same-origin"), http.StatusOK)
	// GET needs no token
	f.want(f.do("GET", "/api/state", otto.token, "", "Origin: http://evil.example"), http.StatusOK)
}

func TestRateLimit(t *testing.T) {
	f := newFixture(t, Options{})
	for i := 0; i < 5; i++ {
		f.want(f.tryLogin("otto", "wrong-password-"+strconv.Itoa(i)), http.StatusUnauthorized)
		f.clock.Add(time.Second)
	}
	r := f.tryLogin("otto", pwOtto) // the right password, too late
	f.want(r, http.StatusTooManyRequests)
	if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After %q", r.Header.Get("Retry-After"))
	}
	// the browser's form says so too
	r = f.do("POST", "/login", "", url.Values{"name": {"otto"}, "password": {pwOtto}}.Encode())
	f.want(r, http.StatusTooManyRequests)
	if !strings.Contains(r.body, "Too many failed logins") {
		t.Errorf("429 page:\n%s", r.body)
	}
	// the remote address is limited too, whatever the name
	f.want(f.tryLogin("vera", pwVera), http.StatusTooManyRequests)

	f.clock.Add(time.Minute)
	f.login("otto", pwOtto)
	f.login("vera", pwVera)

	// successful logins do not count
	for i := 0; i < 10; i++ {
		f.login("vera", pwVera)
	}

	// parallel guesses cannot slip through while bcrypt runs
	f.clock.Add(time.Hour)
	var wg sync.WaitGroup
	codes := make(chan int, 20)
	for i := 0; i < 20; i++ {
		wg.Go(func() { codes <- f.tryLogin("root", "wrong-password-x").StatusCode })
	}
	wg.Wait()
	close(codes)
	n := map[int]int{}
	for c := range codes {
		n[c]++
	}
	if n[http.StatusUnauthorized] != 5 || n[http.StatusTooManyRequests] != 15 {
		t.Errorf("20 parallel wrong logins answered %v, want 5 401 and 15 429", n)
	}
}

func TestLimiterKeys(t *testing.T) {
	// a user name is limited across remote addresses
	l := newLimiter(2, time.Minute)
	now := time.Now()
	if l.begin(now, limiterKeys("10.0.0.1", "ana")) != 0 || l.begin(now, limiterKeys("10.0.0.2", "ANA")) != 0 {
		t.Fatal("first attempts refused")
	}
	if w := l.begin(now.Add(time.Second), limiterKeys("10.0.0.3", "ana")); w != 59*time.Second {
		t.Errorf("third attempt for ana from a third address: wait %v, want 59s", w)
	}
	if l.begin(now.Add(time.Second), limiterKeys("10.0.0.3", "bob")) != 0 {
		t.Error("bob refused")
	}
	l.forgive(now, limiterKeys("10.0.0.1", "ana"))
	if l.begin(now.Add(time.Second), limiterKeys("10.0.0.4", "ana")) != 0 {
		t.Error("a forgiven attempt still counts")
	}
	if w := l.begin(now.Add(59*time.Second), limiterKeys("10.0.0.5", "ana")); w != time.Second {
		t.Errorf("wait %v, want 1s", w)
	}
	if l.begin(now.Add(time.Minute), limiterKeys("10.0.0.5", "ana")) != 0 {
		t.Error("still refused after the window")
	}
}

func TestSessionExpiry(t *testing.T) {
	f := newFixture(t, Options{SessionTTL: time.Hour})

	// idle
	s := f.login("vera", pwVera)
	for i := 0; i < 3; i++ {
		f.clock.Add(59 * time.Minute)
		f.want(f.do("GET", "/api/state", s.token, ""), http.StatusOK)
	}
	f.clock.Add(time.Hour)
	f.want(f.do("GET", "/api/state", s.token, ""), http.StatusUnauthorized)
	f.want(f.do("GET", "/api/state", s.token, ""), http.StatusUnauthorized) // and it is gone

	// absolute: 24 h, however busy
	s = f.login("vera", pwVera)
	elapsed := time.Duration(0)
	for elapsed+50*time.Minute < MaxSessionAge {
		f.clock.Add(50 * time.Minute)
		elapsed += 50 * time.Minute
		f.want(f.do("GET", "/api/state", s.token, ""), http.StatusOK)
	}
	f.clock.Add(50 * time.Minute)
	f.want(f.do("GET", "/api/state", s.token, ""), http.StatusUnauthorized)

	// a longer TTL is cut to 24 h; the default is 8 h
	g := newFixture(t, Options{SessionTTL: 72 * time.Hour})
	if g.a.opt.SessionTTL != MaxSessionAge {
		t.Errorf("TTL %v, want %v", g.a.opt.SessionTTL, MaxSessionAge)
	}
	g = newFixture(t, Options{})
	if g.a.opt.SessionTTL != 8*time.Hour {
		t.Errorf("default TTL %v", g.a.opt.SessionTTL)
	}
}

func TestLogout(t *testing.T) {
	f := newFixture(t, Options{})
	s := f.login("vera", pwVera)
	other := f.login("vera", pwVera)
	f.want(f.do("POST", "/logout", s.token, "", "Accept: application/json"), http.StatusForbidden) // no CSRF
	r := f.post(s, "POST", "/logout", "", "Accept: application/json")
	f.want(r, http.StatusOK)
	if c := sessionCookie(t, r); c.MaxAge >= 0 || c.Value != "" {
		t.Errorf("logout cookie %s", c.Raw)
	}
	f.want(f.do("GET", "/api/whoami", s.token, ""), http.StatusUnauthorized)
	f.want(f.do("GET", "/api/whoami", other.token, ""), http.StatusOK) // the other browser stays

	// the page's form: csrf as a field, back to the login page
	r = f.do("POST", "/logout", other.token, url.Values{"csrf": {other.csrf}}.Encode())
	f.want(r, http.StatusSeeOther)
	if loc := r.Header.Get("Location"); loc != "/login" {
		t.Errorf("Location %q", loc)
	}
	f.want(f.do("GET", "/api/whoami", other.token, ""), http.StatusUnauthorized)
}

func TestWhoami(t *testing.T) {
	f := newFixture(t, Options{})
	s := f.login("otto", pwOtto)
	r := f.do("GET", "/api/whoami", s.token, "")
	f.want(r, http.StatusOK)
	var w map[string]string
	json.Unmarshal([]byte(r.body), &w)
	if w["user"] != "otto" || w["role"] != "operator" || w["csrf"] != s.csrf {
		t.Errorf("whoami %s", r.body)
	}
	if r.Header.Get("Cache-Control") != "no-store" {
		t.Error("whoami may be cached")
	}
}

func TestPasswordChange(t *testing.T) {
	f := newFixture(t, Options{})
	a, b := f.login("otto", pwOtto), f.login("otto", pwOtto)
	const newPw = "Pw-otto-new-2026"
	f.secret(newPw)

	// one's own: with the current password
	f.want(f.post(a, "POST", "/api/users/otto/password", jsonBody(map[string]string{"password": newPw})), http.StatusForbidden)
	f.want(f.post(a, "POST", "/api/users/otto/password", jsonBody(map[string]string{"password": newPw, "current": "wrong-password-1"})), http.StatusForbidden)
	f.want(f.post(a, "POST", "/api/users/otto/password", jsonBody(map[string]string{"password": "short", "current": pwOtto})), http.StatusBadRequest)
	f.want(f.post(a, "POST", "/api/users/otto/password", jsonBody(map[string]string{"password": newPw, "current": pwOtto})), http.StatusOK)
	f.want(f.do("GET", "/api/state", a.token, ""), http.StatusOK)           // this browser stays
	f.want(f.do("GET", "/api/state", b.token, ""), http.StatusUnauthorized) // the other one ends
	f.want(f.tryLogin("otto", pwOtto), http.StatusUnauthorized)
	c := f.login("otto", newPw)

	// another's: admins only, and all of that user's sessions end
	vera := f.login("vera", pwVera)
	f.want(f.post(vera, "POST", "/api/users/otto/password", jsonBody(map[string]string{"password": "Pw-by-vera-123"})), http.StatusForbidden)
	root := f.login("root", pwRoot)
	const rootsPw = "Pw-by-root-9876"
	f.secret(rootsPw)
	f.want(f.post(root, "POST", "/api/users/otto/password", jsonBody(map[string]string{"password": rootsPw})), http.StatusOK)
	for _, s := range []client{a, c} {
		f.want(f.do("GET", "/api/state", s.token, ""), http.StatusUnauthorized)
	}
	f.login("otto", rootsPw)
	f.want(f.post(root, "POST", "/api/users/nobody/password", jsonBody(map[string]string{"password": rootsPw})), http.StatusNotFound)

	// a role change ends the sessions too
	f.want(f.post(root, "POST", "/api/users/vera/role", jsonBody(map[string]string{"role": "operator"})), http.StatusOK)
	f.want(f.do("GET", "/api/state", vera.token, ""), http.StatusUnauthorized)
	vera = f.login("vera", pwVera)
	f.want(f.post(vera, "POST", "/api/mark", "{}"), http.StatusOK)
}

func TestAdminEndpoints(t *testing.T) {
	f := newFixture(t, Options{})
	vera, otto, root := f.login("vera", pwVera), f.login("otto", pwOtto), f.login("root", pwRoot)
	const anaPw = "Pw-ana-5555-new"
	f.secret(anaPw)
	add := jsonBody(map[string]string{"name": "ana", "role": "operator", "password": anaPw})

	// only admins
	f.want(f.do("GET", "/api/users", "", ""), http.StatusUnauthorized)
	f.want(f.do("POST", "/api/users", "", add), http.StatusUnauthorized)
	for _, s := range []client{vera, otto} {
		f.want(f.do("GET", "/api/users", s.token, ""), http.StatusForbidden)
		f.want(f.post(s, "POST", "/api/users", add), http.StatusForbidden)
		f.want(f.post(s, "POST", "/api/users/vera/role", `{"role":"admin"}`), http.StatusForbidden)
		f.want(f.post(s, "DELETE", "/api/users/vera", ""), http.StatusForbidden)
	}
	f.want(f.do("POST", "/api/users", root.token, add), http.StatusForbidden) // no CSRF

	r := f.do("GET", "/api/users", root.token, "")
	f.want(r, http.StatusOK)
	if want := `{"users":[{"name":"otto","role":"operator"},{"name":"root","role":"admin"},{"name":"vera","role":"viewer"}]}`; strings.TrimSpace(r.body) != want {
		t.Errorf("users %s, want %s", r.body, want)
	}

	f.want(f.post(root, "POST", "/api/users", add), http.StatusCreated)
	f.want(f.post(root, "POST", "/api/users", add), http.StatusConflict)
	f.want(f.post(root, "POST", "/api/users", `{"name":"Bad Name","role":"viewer","password":"long-enough-1"}`), http.StatusBadRequest)
	f.want(f.post(root, "POST", "/api/users", `{"name":"bob","role":"boss","password":"long-enough-1"}`), http.StatusBadRequest)
	f.want(f.post(root, "POST", "/api/users", `{"name":"bob","role":"viewer","password":"short"}`), http.StatusBadRequest)
	f.want(f.post(root, "POST", "/api/users", `{"name":"bob","role":"viewer","password":"x","extra":1}`), http.StatusBadRequest)
	// a form works too
	f.secret("long-enough-2")
	f.want(f.post(root, "POST", "/api/users", url.Values{"name": {"bob"}, "role": {"viewer"}, "password": {"long-enough-2"}}.Encode()), http.StatusCreated)
	f.login("ana", anaPw)

	// the last admin stays
	r = f.post(root, "DELETE", "/api/users/root", "")
	f.want(r, http.StatusConflict)
	if !strings.Contains(r.body, "last admin") {
		t.Errorf("409 body %q", r.body)
	}
	f.want(f.post(root, "POST", "/api/users/root/role", `{"role":"operator"}`), http.StatusConflict)
	f.want(f.post(root, "DELETE", "/api/users/nobody", ""), http.StatusNotFound)
	f.want(f.post(root, "POST", "/api/users/vera/role", `{"role":"boss"}`), http.StatusBadRequest)

	// the file: 0600, reloads with the changes
	f.want(f.post(root, "DELETE", "/api/users/vera", ""), http.StatusOK)
	f.want(f.do("GET", "/api/state", vera.token, ""), http.StatusUnauthorized)
	f.want(f.tryLogin("vera", pwVera), http.StatusUnauthorized)
	f.want(f.post(root, "POST", "/api/users/ana/role", `{"role":"admin"}`), http.StatusOK)
	fi, err := os.Stat(f.usersPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("users file mode %04o", fi.Mode().Perm())
	}
	u, err := LoadUsers(f.usersPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.List(); !equalUsers(got, []User{{"ana", Admin}, {"bob", Viewer}, {"otto", Operator}, {"root", Admin}}) {
		t.Errorf("reloaded %v", got)
	}
	if _, ok := u.Check("ana", anaPw); !ok {
		t.Error("ana's password does not check after a reload")
	}
	b, _ := os.ReadFile(f.usersPath)
	if bytes.Contains(b, []byte(anaPw)) || !bytes.Contains(b, []byte(`"hash": "$2a$`)) {
		t.Errorf("users file:\n%s", b)
	}
	if ents, _ := os.ReadDir(f.dir); len(ents) != 2 {
		t.Errorf("left over in the folder: %v", ents)
	}

	// now that ana is an admin, root may go, and root's session with it
	f.want(f.post(root, "DELETE", "/api/users/root", ""), http.StatusOK)
	f.want(f.do("GET", "/api/users", root.token, ""), http.StatusUnauthorized)
}

func TestSaveFailureUndoes(t *testing.T) {
	f := newFixture(t, Options{})
	root := f.login("root", pwRoot)
	// a folder where the file was: reading it fails (the accounts in
	// memory stay, with a warning), and so does the rename onto it
	os.Remove(f.usersPath)
	os.MkdirAll(filepath.Join(f.usersPath, "x"), 0o700)
	f.want(f.post(root, "DELETE", "/api/users/vera", ""), http.StatusInternalServerError)
	if _, ok := f.a.Users().Lookup("vera"); !ok {
		t.Error("a change that was not saved stayed in memory")
	}
	f.want(f.post(root, "DELETE", "/api/users/otto", ""), http.StatusInternalServerError)
	if n := strings.Count(f.logs.String(), "users file changed but cannot be read"); n != 1 {
		t.Errorf("%d warnings about the broken file, want 1:\n%s", n, f.logs.String())
	}
	os.RemoveAll(f.usersPath)
	f.want(f.post(root, "DELETE", "/api/users/vera", ""), http.StatusOK) // writes the file again
}

func equalUsers(a, b []User) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAudit(t *testing.T) {
	f := newFixture(t, Options{})
	otto := f.login("otto", pwOtto)
	f.want(f.post(otto, "POST", "/api/mark", "{}"), http.StatusOK)
	f.want(f.tryLogin("otto", "wrong-password-1"), http.StatusUnauthorized)
	f.want(f.tryLogin(pwVera, "typed into name"), http.StatusUnauthorized) // must not be logged
	f.want(f.post(otto, "POST", "/logout", ""), http.StatusSeeOther)

	fi, err := os.Stat(f.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %04o", fi.Mode().Perm())
	}
	type line struct {
		Time                       time.Time
		User, Role, Remote, Action string
		Fields                     map[string]any
	}
	var lines []line
	fh, _ := os.Open(f.auditPath)
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	var actions []string
	for _, l := range lines {
		actions = append(actions, l.Action)
	}
	if want := "login mark login_failed login_failed logout"; strings.Join(actions, " ") != want {
		t.Errorf("audited %q, want %q", strings.Join(actions, " "), want)
	}
	if len(lines) != 5 {
		t.FailNow()
	}
	m := lines[1]
	if m.User != "otto" || m.Role != "operator" || m.Remote != "127.0.0.1" || m.Fields["camera"] != "line1" || m.Fields["seq"] != 7.0 ||
		m.Fields["Password"] != "[redacted]" || !m.Time.Equal(f.clock.Now()) {
		t.Errorf("mark line %+v", m)
	}
	if lines[2].User != "" || lines[2].Fields["name"] != "otto" || lines[3].Fields["name"] != "(unknown)" {
		t.Errorf("failed logins %+v %+v", lines[2], lines[3])
	}
	f.checkNoSecrets()
	if t.Failed() || testing.Verbose() {
		t.Log(f.logs.String())
	}
}

func TestAuditToLog(t *testing.T) {
	f := newFixture(t, Options{AuditPath: "-"})
	otto := f.login("otto", pwOtto)
	f.want(f.post(otto, "POST", "/api/mark", "{}"), http.StatusOK)
	var found bool
	for _, l := range strings.Split(f.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "audit" && m["action"] == "mark" {
			found = m["level"] == "INFO" && m["user"] == "otto" && m["role"] == "operator"
		}
	}
	if !found {
		t.Errorf("no audit line for the mark in the log:\n%s", f.logs.String())
	}
}

// TestReloadFromGnlctl: gnlctl user changes the file under a running gnld.
func TestReloadFromGnlctl(t *testing.T) {
	f := newFixture(t, Options{})
	vera, root := f.login("vera", pwVera), f.login("root", pwRoot)
	if err := UserCommand([]string{"remove", "vera", "--file", f.usersPath}, nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(3 * time.Second)
	f.want(f.do("GET", "/api/state", vera.token, ""), http.StatusUnauthorized)
	f.want(f.do("GET", "/api/state", root.token, ""), http.StatusOK) // unchanged: stays
	f.want(f.tryLogin("vera", pwVera), http.StatusUnauthorized)

	// a change on the page after one by gnlctl keeps both
	if err := UserCommand([]string{"add", "ana", "--role", "viewer", "--file", f.usersPath}, strings.NewReader("Pw-ana-123456\n"), io.Discard); err != nil {
		t.Fatal(err)
	}
	f.secret("Pw-ana-123456")
	f.want(f.post(root, "POST", "/api/users/otto/role", `{"role":"viewer"}`), http.StatusOK)
	u, err := LoadUsers(f.usersPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.List(); !equalUsers(got, []User{{"ana", Viewer}, {"otto", Viewer}, {"root", Admin}}) {
		t.Errorf("users %v", got)
	}

	// a broken file: the accounts in memory stay, with one warning
	os.WriteFile(f.usersPath, []byte("{"), 0o600)
	if err := f.a.ReloadUsers(); err == nil {
		t.Error("ReloadUsers read a broken file")
	}
	f.clock.Add(3 * time.Second)
	f.want(f.do("GET", "/api/state", root.token, ""), http.StatusOK)
	f.login("ana", "Pw-ana-123456")
}

func TestUsersFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.json")

	_, err := LoadUsers(path)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "gnlctl user add") || !strings.Contains(err.Error(), path) {
		t.Errorf("missing file: %v", err)
	}
	u := NewUsers(path)
	if _, err := New(u, Options{}, nil); err == nil || !strings.Contains(err.Error(), "gnlctl user add") {
		t.Errorf("New without accounts: %v", err)
	}
	for _, c := range []struct {
		name, pw, want string
	}{
		{"Ana", "long-enough-1", "bad user name"},
		{"", "long-enough-1", "bad user name"},
		{strings.Repeat("a", 33), "long-enough-1", "bad user name"},
		{"ana", "short", "too short"},
		{"ana", "ääääääää", "too short"},
		{"ana", strings.Repeat("x", 73), "too long"},
	} {
		if err := u.Add(c.name, Viewer, c.pw); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Add(%q, %q): %v, want %q", c.name, c.pw, err, c.want)
		}
	}
	if err := u.Add("a.n-a_1", Admin, "long-enough-1"); err != nil {
		t.Fatal(err)
	}
	if err := u.Add("a.n-a_1", Admin, "long-enough-1"); !errors.Is(err, ErrUserExists) {
		t.Errorf("second Add: %v", err)
	}
	if _, ok := u.Check("a.n-a_1", "long-enough-1"); !ok {
		t.Error("Check")
	}
	if _, ok := u.Check("a.n-a_1", "long-enough-2"); ok {
		t.Error("Check took a wrong password")
	}
	if _, ok := u.Check("nobody", "long-enough-1"); ok {
		t.Error("Check took an unknown user")
	}
	if err := u.Remove("a.n-a_1"); !errors.Is(err, ErrLastAdmin) {
		t.Errorf("removing the last admin: %v", err)
	}
	if err := u.SetRole("a.n-a_1", Viewer); !errors.Is(err, ErrLastAdmin) {
		t.Errorf("demoting the last admin: %v", err)
	}
	if err := u.SetPassword("nobody", "long-enough-1"); !errors.Is(err, ErrNoUser) {
		t.Errorf("SetPassword(nobody): %v", err)
	}
	if err := u.Save(); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadUsers(path); err != nil {
		t.Fatal(err)
	}

	os.Chmod(path, 0o644)
	if _, err := LoadUsers(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a readable file: %v", err)
	}
	os.Chmod(path, 0o600)
	for content, want := range map[string]string{
		`{"users":[`: "unexpected EOF",
		`{"users":[{"name":"ana","role":"boss","hash":"$2a$04$abc"}]}`:                  "unknown role",
		`{"users":[{"name":"ana","role":"admin","hash":"plain"}]}`:                      "not a bcrypt hash",
		`{"users":[{"name":"ana","role":"admin","hash":"x","password":"p"}]}`:           "unknown field",
		`{"users":[{"name":"Ana","role":"admin","hash":"x"}]}`:                          "bad user name",
		`{"users":[{"name":"ana","hash":"$2a$04$abcdefghijklmnopqrstuu5Ewq0ha3DTFO"}]}`: "no role",
	} {
		os.WriteFile(path, []byte(content), 0o600)
		if _, err := LoadUsers(path); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want %q and the path", content, err, want)
		}
	}

	for s, want := range map[string]Role{"viewer": Viewer, "operator": Operator, "admin": Admin} {
		if r, err := ParseRole(s); err != nil || r != want || r.String() != s {
			t.Errorf("ParseRole(%q) = %v, %v", s, r, err)
		}
	}
	if _, err := ParseRole("Admin"); err == nil {
		t.Error("ParseRole(Admin)")
	}
	if !(Viewer < Operator && Operator < Admin) {
		t.Error("roles out of order")
	}
}

func TestUserCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.json")
	run := func(stdin string, args ...string) (string, error) {
		var out bytes.Buffer
		err := UserCommand(args, strings.NewReader(stdin), &out)
		return out.String(), err
	}

	if out, _ := run("Pw-op-123456\n", "add", "op", "--role", "operator", "--file", path+".op"); !strings.Contains(out, "no admin") {
		t.Errorf("a first account that is no admin: %q", out)
	}
	out, err := run("Pw-admin-12345\n", "add", "boss", "--role", "admin", "--file", path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "first line of standard input") || !strings.Contains(out, "added boss (admin)") || !strings.Contains(out, "created") {
		t.Errorf("add said %q", out)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("users file: %v %v", fi, err)
	}
	// flags before the positionals, password without a newline
	if out, err := run("Pw-ana-12345", "add", "--file", path, "--role=operator", "ana"); err != nil || strings.Contains(out, "no admin") || strings.Contains(out, "created") {
		t.Fatalf("second add: %q %v", out, err)
	}
	t.Setenv("GNLD_HTTP_USERS", path)
	out, err = run("", "list")
	if err != nil {
		t.Fatal(err)
	}
	if want := "NAME  ROLE\nana   operator\nboss  admin\n"; out != want {
		t.Errorf("list:\n%s\nwant:\n%s", out, want)
	}

	if _, err := run("Pw-ana-67890\r\n", "passwd", "ana", "--file", path); err != nil {
		t.Fatal(err)
	}
	if _, err := run("", "role", "ana", "admin"); err != nil {
		t.Fatal(err)
	}
	u, err := LoadUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	if x, ok := u.Check("ana", "Pw-ana-67890"); !ok || x.Role != Admin {
		t.Errorf("ana after passwd and role: %v %v", x, ok)
	}
	if _, err := run("", "remove", "boss"); err != nil {
		t.Fatal(err)
	}
	if _, err := run("", "remove", "ana"); !errors.Is(err, ErrLastAdmin) {
		t.Errorf("removing the last admin: %v", err)
	}
	if _, err := run("", "role", "ana", "viewer"); !errors.Is(err, ErrLastAdmin) {
		t.Errorf("demoting the last admin: %v", err)
	}

	// mistakes
	var ue UsageError
	for _, args := range [][]string{
		{}, {"frobnicate"}, {"add", "x"}, {"add", "--role", "admin"}, {"role", "ana"}, {"list", "extra"},
		{"add", "x", "--role", "boss"}, {"list", "--nope"},
	} {
		if _, err := run("Pw-x-1234567\n", args...); !errors.As(err, &ue) {
			t.Errorf("%q: %v, want a UsageError", args, err)
		}
	}
	t.Setenv("GNLD_HTTP_USERS", "")
	if _, err := run("", "list"); !errors.As(err, &ue) {
		t.Errorf("no --file: %v", err)
	}
	if _, err := run("", "list", "--file", path+".missing"); err == nil || !strings.Contains(err.Error(), "gnlctl user add") {
		t.Errorf("missing file: %v", err)
	}
	for stdin, want := range map[string]string{"": "no password", "short\n": "too short"} {
		if _, err := run(stdin, "add", "x", "--role", "viewer", "--file", path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("stdin %q: %v, want %q", stdin, err, want)
		}
	}
	if _, err := run("Pw-x-1234567\n", "add", "ana", "--role", "viewer", "--file", path); !errors.Is(err, ErrUserExists) {
		t.Errorf("adding ana twice: %v", err)
	}
	if out, err := run("", "-h"); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out, "gnlctl user add") {
		t.Errorf("-h: %q %v", out, err)
	}
}
