package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"gnld/internal/auth"
	"gnld/internal/httpserver"
)

// gnld's HTTP listener (GNLD_HTTP_ADDR; off by default). Package
// internal/httpserver owns the socket; this file says what is served.
//
// To add an endpoint, add one line to routes below and keep the handler in
// its own file (or package). Handlers run on the server's goroutines:
// goroutine-safe, reading counters and state, never waiting on a frame.

// routes registers every endpoint of gnld's HTTP listener on mux. With
// accounts (GNLD_HTTP_USERS) everything but the login and, with
// GNLD_HTTP_OPEN_PROBES, /metrics, /healthz and /readyz sits behind a
// login (package auth: viewer at least; marking and teaching need an
// operator, review.go).
func (d *daemon) routes(mux *http.ServeMux) {
	open, guarded := mux, mux
	if d.auth != nil {
		guarded = http.NewServeMux()
		d.auth.Register(mux) // /login, /logout, /api/whoami, /api/users
		mux.Handle("/", d.auth.Require(auth.Viewer, guarded))
		if !d.cfg.HTTPOpenProbes {
			open = guarded
		}
	}
	open.Handle("GET /metrics", d.metrics.Handler())
	open.HandleFunc("GET /healthz", d.healthz)
	open.HandleFunc("GET /readyz", d.readyz)
	if d.page != nil {
		d.page.Register(guarded) // the technicians' page: / and /api/ (page.go)
	}
	if d.evidence != nil {
		d.reviewRoutes(guarded) // the review page's API (review.go)
	}
}

// listenHTTP opens the listener when GNLD_HTTP_ADDR is set, so that a
// taken port stops start-up; serveHTTP serves it until stopHTTP.
func (d *daemon) listenHTTP() error {
	if d.cfg.httpListen == "" {
		return nil
	}
	s, err := httpserver.Listen(d.cfg.httpListen, d.log)
	if err != nil {
		return err
	}
	d.http = s
	if d.cfg.HTTPTLSCert != "" {
		if err := s.UseTLS(d.cfg.HTTPTLSCert, d.cfg.HTTPTLSKey); err != nil {
			return fmt.Errorf("GNLD_HTTP_TLS_CERT: %w", err)
		}
	}
	if d.cfg.HTTPUsers != "" {
		users, err := auth.LoadUsers(d.cfg.HTTPUsers)
		if err != nil {
			return fmt.Errorf("GNLD_HTTP_USERS: %w", err)
		}
		if d.auth, err = auth.New(users, auth.Options{SessionTTL: d.cfg.HTTPSessionTTL, Secure: s.TLS(), AuditPath: d.cfg.HTTPAudit}, d.log); err != nil {
			return fmt.Errorf("GNLD_HTTP_USERS: %w", err)
		}
	} else if !isLoopback(d.cfg.httpListen) {
		d.log.Warn("http: the page is open to anyone who reaches "+d.cfg.httpListen+" (no GNLD_HTTP_USERS); it shows every camera's frames",
			"fix", "make accounts with gnlctl user add and set GNLD_HTTP_USERS")
	}
	d.routes(s.Mux)
	return nil
}

// isLoopback reports whether a resolved listen address is on loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

func (d *daemon) serveHTTP() {
	if d.http != nil {
		go d.http.Serve()
	}
}

// stopHTTP ends the listener, waiting a moment for requests in flight.
func (d *daemon) stopHTTP() {
	if d.http == nil {
		return
	}
	if d.page != nil {
		d.page.Close() // ends the page's event streams
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	d.http.Shutdown(ctx)
	if d.auth != nil {
		d.auth.Close() // the audit file
	}
}
