package main

import (
	"context"
	"net/http"
	"time"

	"gnld/internal/httpserver"
)

// gnld's HTTP listener (GNLD_HTTP_ADDR; off by default). Package
// internal/httpserver owns the socket; this file says what is served.
//
// To add an endpoint, add one line to routes below and keep the handler in
// its own file (or package). Handlers run on the server's goroutines:
// goroutine-safe, reading counters and state, never waiting on a frame.

// routes registers every endpoint of gnld's HTTP listener on mux.
func (d *daemon) routes(mux *http.ServeMux) {
	mux.Handle("GET /metrics", d.metrics.Handler())
	mux.HandleFunc("GET /healthz", d.healthz)
	mux.HandleFunc("GET /readyz", d.readyz)
	if d.page != nil {
		d.page.Register(mux) // the technicians' page: / and /api/ (page.go)
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
	d.routes(s.Mux)
	return nil
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
}
