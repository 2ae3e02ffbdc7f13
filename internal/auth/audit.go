package auth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// auditLog appends one JSON line per audited action to a file.
type auditLog struct {
	mu   sync.Mutex
	f    *os.File
	path string
}

func openAudit(path string) (*auditLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	f.Chmod(0o600) // an existing file too; best effort (it may be another user's)
	return &auditLog{f: f, path: path}, nil
}

// auditLine is one line of the audit log.
type auditLine struct {
	Time   time.Time      `json:"time"`
	User   string         `json:"user,omitempty"`
	Role   string         `json:"role,omitempty"`
	Remote string         `json:"remote"`
	Action string         `json:"action"`
	Fields map[string]any `json:"fields,omitempty"`
}

// Audit records that the request's user did action, with fields that say
// what to (a camera, a frame, a label). It writes one JSON line to the
// audit log (Options.AuditPath) and logs it.
//
//	{"time":"…","user":"ana","role":"operator","remote":"10.0.0.7","action":"mark","fields":{"camera":"line1","seq":1234}}
//
// Fields whose names look like secrets (password, token, csrf, secret,
// cookie, session, authorization) are written as "[redacted]": never pass
// passwords or tokens. Call it from handlers behind Require, after the
// action succeeded.
func (a *Auth) Audit(r *http.Request, action string, fields map[string]any) {
	u, _ := UserFrom(r.Context())
	a.audit(r, u, action, fields)
}

func (a *Auth) audit(r *http.Request, u User, action string, fields map[string]any) {
	line := auditLine{Time: a.now().UTC(), User: u.Name, Remote: remoteIP(r), Action: action, Fields: redact(fields)}
	if u.Role != 0 {
		line.Role = u.Role.String()
	}
	args := []any{"action", action, "user", line.User, "role", line.Role, "remote", line.Remote}
	if len(line.Fields) > 0 {
		args = append(args, "fields", line.Fields)
	}
	if a.auditLog == nil {
		a.log.Info("audit", args...)
		return
	}
	a.log.Debug("audit", args...)
	b, err := json.Marshal(line)
	if err != nil {
		a.log.Error("audit: cannot encode", "action", action, "err", err)
		return
	}
	b = append(b, '\n')
	a.auditLog.mu.Lock()
	defer a.auditLog.mu.Unlock()
	if _, err := a.auditLog.f.Write(b); err != nil {
		a.log.Error("audit: cannot write", "path", a.auditLog.path, "action", action, "user", line.User, "err", err)
	}
}

var secretWords = []string{"password", "passwd", "token", "csrf", "secret", "cookie", "session", "authorization"}

// redact is fields with the values of secret-looking names replaced.
func redact(fields map[string]any) map[string]any {
	if len(fields) == 0 {
		return nil
	}
	out := make(map[string]any, len(fields))
	for k, v := range fields {
		lk := strings.ToLower(k)
		for _, w := range secretWords {
			if strings.Contains(lk, w) {
				v = "[redacted]"
				break
			}
		}
		out[k] = v
	}
	return out
}
