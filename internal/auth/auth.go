// Package auth guards gnld's HTTP listener (GNLD_HTTP_ADDR): accounts
// with roles, logins, sessions, CSRF protection, login rate limiting and
// an audit log of what operators do.
//
// Roles are ordered: a Viewer sees the technicians' page, an Operator also
// marks frames and teaches the model, an Admin also manages accounts.
// Accounts live in a JSON file (GNLD_HTTP_USERS, mode 0600) of bcrypt
// hashes, written by `gnlctl user` (UserCommand) and by the admin
// endpoints.
//
// Lifecycle and who calls what:
//
//   - gnld at start-up: LoadUsers, then New, then Register on the
//     listener's mux (the login page, /login, /logout, /api/whoami and the
//     account endpoints /api/users...), then every other feature's
//     handler wrapped in Require with the role it needs (below).
//   - Handlers behind Require, on the server's goroutines: UserFrom gives
//     the user; a handler that changes something calls Audit after it
//     succeeded (marks, teachings).
//   - A browser: GET /login (the form), POST /login (a session cookie),
//     then GET /api/whoami for its CSRF token, which it sends with every
//     write as the X-CSRF-Token header (or the form field csrf).
//   - gnlctl user (UserCommand) edits the file; a running gnld picks the
//     change up within seconds (it looks at the file at most every 2 s, at
//     login and before an account change), or at once on ReloadUsers (for
//     SIGHUP).
//   - gnld at shutdown: Close, after the HTTP server has shut down.
//
// Wrapping a feature's handlers (/metrics, /healthz and /readyz may stay
// outside Require, for scrapers):
//
//	mux.Handle("GET /{$}", a.Require(auth.Viewer, page))
//	mux.Handle("POST /api/cameras/{name}/mark", a.Require(auth.Operator, mark))
//
// Sessions are held in memory only (a restart logs everyone out), keyed by
// the SHA-256 of the cookie's token, and end after Options.SessionTTL
// without a request, after MaxSessionAge in any case, at logout, and when
// the account's password or role changes or the account goes.
//
// Nothing here logs, audits or shows a password, a hash or a session or
// CSRF token: logs name users, roles and remote addresses only, and a
// failed login names the account only when it exists (people type
// passwords into the name field).
package auth

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// CookieName is the session cookie's name.
const CookieName = "gnld_session"

// Options tune Auth. Zero values take the defaults.
type Options struct {
	// SessionTTL ends a session after this long without a request; default
	// 8 h, at most MaxSessionAge.
	SessionTTL time.Duration
	// Secure gives the cookie the Secure flag: set it when the listener
	// serves HTTPS.
	Secure bool
	// LoginLimit is how many failed logins one remote address, and one
	// user name, may make per LoginWindow; default 5. Past it, POST /login
	// answers 429 with Retry-After, even with the right password.
	LoginLimit  int
	LoginWindow time.Duration // default 1 minute
	// AuditPath is the audit log, JSON lines appended to a file (mode
	// 0600); "" audits to the logger only.
	AuditPath string
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Auth is the accounts, the sessions and the handlers. It is
// goroutine-safe.
type Auth struct {
	users    *Users
	opt      Options
	log      *slog.Logger
	now      func() time.Time
	sess     *sessions
	limit    *limiter
	auditLog *auditLog // nil: audit to log only

	accounts  sync.Mutex   // serializes account changes and reloads
	lastCheck atomic.Int64 // a.now() in Unix ns when the file was last checked
}

// New guards with users. log may be nil (no logging).
func New(users *Users, opt Options, log *slog.Logger) (*Auth, error) {
	if users == nil {
		return nil, errors.New("auth: no users")
	}
	if len(users.List()) == 0 {
		return nil, fmt.Errorf("users file %s has no accounts, so nobody could log in: add one with `gnlctl user add NAME --role admin --file %s`", users.Path(), users.Path())
	}
	if opt.SessionTTL < 0 || opt.LoginLimit < 0 || opt.LoginWindow < 0 {
		return nil, errors.New("auth: negative session TTL, login limit or login window")
	}
	if opt.SessionTTL == 0 {
		opt.SessionTTL = 8 * time.Hour
	}
	opt.SessionTTL = min(opt.SessionTTL, MaxSessionAge)
	if opt.LoginLimit == 0 {
		opt.LoginLimit = 5
	}
	if opt.LoginWindow == 0 {
		opt.LoginWindow = time.Minute
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Auth{
		users: users, opt: opt, log: log, now: opt.Now,
		sess:  newSessions(opt.SessionTTL),
		limit: newLimiter(opt.LoginLimit, opt.LoginWindow),
	}
	if opt.AuditPath != "" {
		al, err := openAudit(opt.AuditPath)
		if err != nil {
			return nil, err
		}
		a.auditLog = al
	}
	return a, nil
}

// Close closes the audit log. Call it after the HTTP server has shut down.
func (a *Auth) Close() error {
	if a.auditLog == nil {
		return nil
	}
	return a.auditLog.f.Close()
}

// Users is the accounts Auth checks against.
func (a *Auth) Users() *Users { return a.users }

// ReloadUsers reads the users file again (after gnlctl user changed it)
// and ends the sessions of accounts whose password or role changed or that
// are gone. On error the accounts in memory stay.
func (a *Auth) ReloadUsers() error {
	a.accounts.Lock()
	defer a.accounts.Unlock()
	fi, _ := a.users.changedOnDisk()
	return a.reloadLocked(fi)
}

// refreshUsers reloads the users file if it changed on disk; a.accounts is
// held.
func (a *Auth) refreshUsers() {
	fi, changed := a.users.changedOnDisk()
	if !changed {
		return
	}
	if err := a.reloadLocked(fi); err != nil {
		a.log.Warn("auth: users file changed but cannot be read; keeping the accounts in memory", "err", err)
	}
}

// reloadLocked reads the users file; fi is its state, remembered even
// when it cannot be read, so that a broken file is reported once.
// a.accounts is held.
func (a *Auth) reloadLocked(fi os.FileInfo) error {
	fresh, err := LoadUsers(a.users.Path())
	if err != nil {
		if fi != nil {
			a.users.setStat(fi)
		}
		return err
	}
	old := a.users.replace(fresh)
	ended := 0
	for name, acc := range old {
		if now, ok := fresh.accs[name]; !ok || now.Role != acc.Role || now.Hash != acc.Hash {
			ended += a.sess.endUser(name, sessionKey{})
		}
	}
	a.log.Info("auth: users file read", "path", a.users.Path(), "users", len(fresh.accs), "logouts", ended)
	return nil
}

// Register adds the login page and the account endpoints to mux:
//
//	GET  /login                       the login form (?next=/path)
//	POST /login                       name, password[, next]: a session cookie
//	POST /logout                      any role, with CSRF
//	GET  /api/whoami                  {"user","role","csrf"}, or 401
//	GET  /api/users                   admin: {"users":[{"name","role"}]}
//	POST /api/users                   admin: add {name, role, password}
//	POST /api/users/{name}/role       admin: {role}
//	POST /api/users/{name}/password   admin, or the user (with {current}): {password}
//	DELETE /api/users/{name}          admin
//
// Bodies are JSON (Content-Type: application/json) or form fields.
func (a *Auth) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /login", a.serveLoginPage)
	mux.HandleFunc("POST /login", a.serveLogin)
	mux.Handle("POST /logout", a.Require(Viewer, http.HandlerFunc(a.serveLogout)))
	mux.Handle("GET /api/whoami", a.Require(Viewer, http.HandlerFunc(a.serveWhoami)))
	mux.Handle("GET /api/users", a.Require(Admin, http.HandlerFunc(a.serveUsers)))
	mux.Handle("POST /api/users", a.Require(Admin, http.HandlerFunc(a.serveAddUser)))
	mux.Handle("POST /api/users/{name}/role", a.Require(Admin, http.HandlerFunc(a.serveSetRole)))
	mux.Handle("POST /api/users/{name}/password", a.Require(Viewer, http.HandlerFunc(a.serveSetPassword)))
	mux.Handle("DELETE /api/users/{name}", a.Require(Admin, http.HandlerFunc(a.serveRemoveUser)))
}

// ctxKey keys the request's session in its context.
type ctxKey struct{}

type reqSession struct {
	user User
	key  sessionKey
	csrf string
}

// UserFrom is the user of a request that passed Require.
func UserFrom(ctx context.Context) (User, bool) {
	rs, ok := ctx.Value(ctxKey{}).(*reqSession)
	if !ok {
		return User{}, false
	}
	return rs.user, true
}

// CSRFToken is the CSRF token of a request that passed Require ("" for
// others), for a handler that renders a form with a csrf field. Never log
// it.
func CSRFToken(ctx context.Context) string {
	rs, ok := ctx.Value(ctxKey{}).(*reqSession)
	if !ok {
		return ""
	}
	return rs.csrf
}

// Require serves h to users with at least role min:
//   - without a live session: 401 for /api/ paths and JSON clients
//     (Accept: application/json), else a 303 redirect to /login?next=PATH;
//   - with a lower role: 403;
//   - for a method other than GET, HEAD and OPTIONS: 403 unless the
//     session's CSRF token comes in the X-CSRF-Token header or the form
//     field csrf, and unless the request is same-origin (an Origin header
//     must name r.Host; Sec-Fetch-Site, when sent, must be same-origin).
//     A form's csrf field is read with r.ParseForm or
//     r.ParseMultipartForm (32 MiB in memory), so h finds it parsed.
//
// h gets the user from UserFrom(r.Context()).
func (a *Auth) Require(min Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.maybeRefresh()
		key, s, ok := a.session(r)
		if !ok {
			a.unauthenticated(w, r)
			return
		}
		if s.user.Role < min {
			a.deny(w, r, s.user, fmt.Sprintf("%s needs the %s role; %s is %s", r.URL.Path, min, s.user.Name, s.user.Role))
			return
		}
		if !safeMethod(r.Method) {
			if err := checkOrigin(r); err != nil {
				a.deny(w, r, s.user, err.Error())
				return
			}
			if !csrfOK(r, s.csrf) {
				a.deny(w, r, s.user, "missing or wrong CSRF token: send the csrf from /api/whoami in the X-CSRF-Token header (or a form field csrf); reload the page")
				return
			}
		}
		ctx := context.WithValue(r.Context(), ctxKey{}, &reqSession{user: s.user, key: key, csrf: s.csrf})
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// maybeRefresh looks at the users file at most every 2 s, skipping when
// an account change holds the lock.
func (a *Auth) maybeRefresh() {
	now := a.now().UnixNano()
	last := a.lastCheck.Load()
	if now-last < int64(2*time.Second) && now >= last || !a.lastCheck.CompareAndSwap(last, now) {
		return
	}
	if a.accounts.TryLock() {
		a.refreshUsers()
		a.accounts.Unlock()
	}
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// session is the live session of r's cookie.
func (a *Auth) session(r *http.Request) (sessionKey, session, bool) {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return sessionKey{}, session{}, false
	}
	return a.sess.get(c.Value, a.now())
}

func (a *Auth) unauthenticated(w http.ResponseWriter, r *http.Request) {
	if _, err := r.Cookie(CookieName); err == nil {
		http.SetCookie(w, a.clearCookie()) // expired or unknown: drop it
	}
	if isAPI(r) {
		a.fail(w, r, http.StatusUnauthorized, "not logged in: POST /login first")
		return
	}
	http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
}

func (a *Auth) deny(w http.ResponseWriter, r *http.Request, u User, why string) {
	a.log.Debug("auth: refused", "user", u.Name, "role", u.Role.String(), "remote", remoteIP(r), "method", r.Method, "path", r.URL.Path)
	a.fail(w, r, http.StatusForbidden, why)
}

// checkOrigin refuses a cross-origin write.
func checkOrigin(r *http.Request) error {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) {
			return fmt.Errorf("cross-origin request refused: Origin %q is not %q", o, r.Host)
		}
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
		return fmt.Errorf("cross-origin request refused: Sec-Fetch-Site is %q", s)
	}
	return nil
}

func csrfOK(r *http.Request, want string) bool {
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if ct == "application/x-www-form-urlencoded" || ct == "multipart/form-data" {
			got = r.PostFormValue("csrf")
		}
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func (a *Auth) cookie(token string) *http.Cookie {
	return &http.Cookie{Name: CookieName, Value: token, Path: "/", HttpOnly: true, Secure: a.opt.Secure, SameSite: http.SameSiteStrictMode}
}

func (a *Auth) clearCookie() *http.Cookie {
	c := a.cookie("")
	c.MaxAge = -1
	return c
}

// remoteIP is the address the request came from (gnld trusts no proxy
// header).
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func wantsJSON(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "application/json")
}

func isAPI(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/api/") || wantsJSON(r)
}

// fail answers an error: JSON {"error": msg} to API clients, text to
// browsers.
func (a *Auth) fail(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if isAPI(r) {
		writeJSON(w, code, map[string]string{"error": msg})
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, msg, code)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

//go:embed login.html
var loginHTML string

var loginPage = template.Must(template.New("login").Parse(loginHTML))

type loginView struct {
	Next, Error string
}

func (a *Auth) serveLoginPage(w http.ResponseWriter, r *http.Request) {
	a.renderLogin(w, http.StatusOK, loginView{Next: localPath(r.URL.Query().Get("next"))})
}

func (a *Auth) renderLogin(w http.ResponseWriter, code int, v loginView) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin") // no-referrer makes Chromium post the form with Origin: null, which checkOrigin refuses
	w.WriteHeader(code)
	if err := loginPage.Execute(w, v); err != nil {
		a.log.Debug("auth: login page", "err", err)
	}
}

// localPath is next when it is a path on this server, else "/": a login
// must not send the browser elsewhere.
func localPath(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, `\`) {
		return "/"
	}
	for _, c := range next {
		if c < 0x20 || c == 0x7f {
			return "/"
		}
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil {
		return "/"
	}
	return next
}

// form is the fields of a login or account request.
type form struct {
	Name     string `json:"name"`
	Password string `json:"password"`
	Next     string `json:"next"`
	Role     string `json:"role"`
	Current  string `json:"current"` // the password now, to change one's own
}

// readForm reads a small JSON or form body (never the URL's query: a
// password there would end up in access logs).
func readForm(w http.ResponseWriter, r *http.Request) (form, error) {
	var f form
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/json" {
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			return f, fmt.Errorf("bad JSON body: %v", err)
		}
		return f, nil
	}
	if err := r.ParseForm(); err != nil {
		return f, fmt.Errorf("bad form body: %v", err)
	}
	pf := r.PostForm
	f = form{Name: pf.Get("name"), Password: pf.Get("password"), Next: pf.Get("next"), Role: pf.Get("role"), Current: pf.Get("current")}
	return f, nil
}

// knownName is name when it has an account, for logs: what someone typed
// into the name field may be their password.
func (a *Auth) knownName(name string) string {
	if _, ok := a.users.Lookup(name); ok {
		return name
	}
	return "(unknown)"
}

// serveLogin checks a name and password and starts a session.
func (a *Auth) serveLogin(w http.ResponseWriter, r *http.Request) {
	if err := checkOrigin(r); err != nil {
		a.fail(w, r, http.StatusForbidden, err.Error())
		return
	}
	f, err := readForm(w, r)
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	next := localPath(f.Next)
	ip := remoteIP(r)
	now := a.now()
	if a.accounts.TryLock() {
		a.refreshUsers()
		a.accounts.Unlock()
	}
	keys := limiterKeys(ip, f.Name)
	if wait := a.limit.begin(now, keys); wait > 0 {
		secs := int((wait + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		a.log.Warn("auth: login refused: too many failed attempts", "user", a.knownName(f.Name), "remote", ip, "retry_after_s", secs)
		a.loginFailed(w, r, http.StatusTooManyRequests, fmt.Sprintf("Too many failed logins: try again in %d s.", secs), next)
		return
	}
	u, ok := a.users.Check(f.Name, f.Password)
	if !ok {
		name := a.knownName(f.Name)
		a.log.Warn("auth: login failed", "user", name, "remote", ip)
		a.audit(r, User{}, "login_failed", map[string]any{"name": name})
		a.loginFailed(w, r, http.StatusUnauthorized, "Wrong name or password.", next)
		return
	}
	a.limit.forgive(now, keys)
	token, s := a.sess.create(u, now)
	http.SetCookie(w, a.cookie(token))
	a.audit(r, u, "login", nil)
	if wantsJSON(r) {
		writeJSON(w, http.StatusOK, whoami{User: u.Name, Role: u.Role, CSRF: s.csrf})
		return
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (a *Auth) loginFailed(w http.ResponseWriter, r *http.Request, code int, msg, next string) {
	if wantsJSON(r) {
		writeJSON(w, code, map[string]string{"error": msg})
		return
	}
	a.renderLogin(w, code, loginView{Next: next, Error: msg})
}

func (a *Auth) serveLogout(w http.ResponseWriter, r *http.Request) {
	rs := r.Context().Value(ctxKey{}).(*reqSession)
	a.sess.delete(rs.key)
	http.SetCookie(w, a.clearCookie())
	a.audit(r, rs.user, "logout", nil)
	if wantsJSON(r) {
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
		return
	}
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// whoami is the answer of GET /api/whoami and of a JSON login.
type whoami struct {
	User string `json:"user"`
	Role Role   `json:"role"`
	CSRF string `json:"csrf"`
}

func (a *Auth) serveWhoami(w http.ResponseWriter, r *http.Request) {
	rs := r.Context().Value(ctxKey{}).(*reqSession)
	writeJSON(w, http.StatusOK, whoami{User: rs.user.Name, Role: rs.user.Role, CSRF: rs.csrf})
}

func (a *Auth) serveUsers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string][]User{"users": a.users.List()})
}

// saveError is a change that could not be written to the users file (and
// was undone).
type saveError struct{ err error }

func (e saveError) Error() string { return e.err.Error() + " (the change was undone)" }

// changeAccounts runs change and saves the users file, undoing the change
// when the file cannot be written.
func (a *Auth) changeAccounts(change func() error) error {
	a.accounts.Lock()
	defer a.accounts.Unlock()
	a.refreshUsers() // do not overwrite what gnlctl just wrote
	before := a.users.snapshot()
	if err := change(); err != nil {
		return err
	}
	if err := a.users.Save(); err != nil {
		a.users.restore(before)
		return saveError{err}
	}
	return nil
}

// failChange answers an account change's error with its status.
func (a *Auth) failChange(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusBadRequest
	switch {
	case errors.Is(err, ErrNoUser):
		code = http.StatusNotFound
	case errors.Is(err, ErrUserExists), errors.Is(err, ErrLastAdmin):
		code = http.StatusConflict
	case errors.As(err, new(saveError)):
		code = http.StatusInternalServerError
		a.log.Error("auth: cannot save the users file", "err", err)
	}
	a.fail(w, r, code, err.Error())
}

func (a *Auth) serveAddUser(w http.ResponseWriter, r *http.Request) {
	f, err := readForm(w, r)
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	role, err := ParseRole(f.Role)
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if err := a.changeAccounts(func() error { return a.users.Add(f.Name, role, f.Password) }); err != nil {
		a.failChange(w, r, err)
		return
	}
	a.Audit(r, "user_add", map[string]any{"name": f.Name, "role": role.String()})
	writeJSON(w, http.StatusCreated, User{Name: f.Name, Role: role})
}

func (a *Auth) serveSetRole(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	f, err := readForm(w, r)
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	role, err := ParseRole(f.Role)
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if err := a.changeAccounts(func() error { return a.users.SetRole(name, role) }); err != nil {
		a.failChange(w, r, err)
		return
	}
	ended := a.sess.endUser(name, sessionKey{})
	a.Audit(r, "user_role", map[string]any{"name": name, "role": role.String(), "logouts": ended})
	writeJSON(w, http.StatusOK, User{Name: name, Role: role})
}

// serveSetPassword sets a password: an admin's for anyone, a user's for
// themself, given their current password (rate-limited like logins). The
// account's other sessions end.
func (a *Auth) serveSetPassword(w http.ResponseWriter, r *http.Request) {
	rs := r.Context().Value(ctxKey{}).(*reqSession)
	name := r.PathValue("name")
	self := name == rs.user.Name
	if !self && rs.user.Role < Admin {
		a.deny(w, r, rs.user, "only an admin may set another user's password")
		return
	}
	f, err := readForm(w, r)
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	keep := sessionKey{}
	if self {
		now := a.now()
		keys := limiterKeys(remoteIP(r), name)
		if wait := a.limit.begin(now, keys); wait > 0 {
			secs := int((wait + time.Second - 1) / time.Second)
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			a.fail(w, r, http.StatusTooManyRequests, fmt.Sprintf("too many wrong passwords: try again in %d s", secs))
			return
		}
		if _, ok := a.users.Check(name, f.Current); !ok {
			a.log.Warn("auth: password change refused: wrong current password", "user", name, "remote", remoteIP(r))
			a.deny(w, r, rs.user, "the current password (field current) is wrong")
			return
		}
		a.limit.forgive(now, keys)
		keep = rs.key
	}
	if err := a.changeAccounts(func() error { return a.users.SetPassword(name, f.Password) }); err != nil {
		a.failChange(w, r, err)
		return
	}
	ended := a.sess.endUser(name, keep)
	a.Audit(r, "user_password", map[string]any{"name": name, "logouts": ended})
	writeJSON(w, http.StatusOK, map[string]string{"name": name})
}

func (a *Auth) serveRemoveUser(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := a.changeAccounts(func() error { return a.users.Remove(name) }); err != nil {
		a.failChange(w, r, err)
		return
	}
	ended := a.sess.endUser(name, sessionKey{})
	a.Audit(r, "user_remove", map[string]any{"name": name, "logouts": ended})
	writeJSON(w, http.StatusOK, map[string]string{"name": name})
}
