// Package httpserver is gnld's one HTTP listener (GNLD_HTTP_ADDR, off by
// default). Every HTTP feature (metrics, health, the technicians' page)
// registers its handlers on the listener's single *http.ServeMux.
//
// Registering a handler: add one line to daemon.routes in
// cmd/gnld/http.go, with the handler itself in its own file or package:
//
//	mux.Handle("GET /metrics", d.metrics.Handler())
//	mux.HandleFunc("GET /healthz", d.healthz)
//
// Patterns use Go's method and path syntax ("GET /path", "/static/").
// Handlers run on the server's goroutines, so they must be goroutine-safe,
// and must not wait on the pipeline: read counters, never a frame.
//
// Lifecycle: Listen opens the socket (a taken port or a bad address stops
// start-up with an error); routes are registered on Mux before Serve;
// Serve runs in its own goroutine until Shutdown.
package httpserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Resolve turns a GNLD_HTTP_ADDR value into the address to listen on.
// "" is off (ok false). A bare ":port", or any address with an empty
// host, means loopback 127.0.0.1: the listener is reachable from other
// machines only when a host such as 0.0.0.0 is named.
func Resolve(addr string) (listen string, ok bool, err error) {
	if addr == "" {
		return "", false, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", false, fmt.Errorf("%q: %w", addr, err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil || port == "" {
		return "", false, fmt.Errorf("%q: bad port %q", addr, port)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), true, nil
}

// Server is the listener and its mux.
type Server struct {
	// Mux is where features register their handlers, before Serve.
	Mux *http.ServeMux

	ln  net.Listener
	srv *http.Server
	log *slog.Logger
	tls bool
}

// Listen opens addr (as returned by Resolve) for TCP.
func Listen(addr string, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http listener: %w", err)
	}
	mux := http.NewServeMux()
	s := &Server{Mux: mux, ln: ln, log: log}
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		// No WriteTimeout: a feature may stream (server-sent events).
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// UseTLS makes the listener HTTPS with the PEM certificate (and chain) and
// key in certFile and keyFile, TLS 1.2 or later. Call it before Serve; a
// file that is missing or does not hold a matching pair is an error that
// names it.
func (s *Server) UseTLS(certFile, keyFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("https certificate %s and key %s: %w; give a PEM certificate and its PEM private key", certFile, keyFile, err)
	}
	s.ln = tls.NewListener(s.ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	s.tls = true
	return nil
}

// TLS reports whether the listener is HTTPS (UseTLS).
func (s *Server) TLS() bool { return s.tls }

// Addr is the address listened on (the real port when Listen got port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve answers requests until Shutdown. Call it once, in its own
// goroutine.
func (s *Server) Serve() {
	s.log.Info("http: listening", "addr", s.Addr().String(), "tls", s.tls)
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("http: listener failed", "err", err)
	}
}

// Shutdown stops accepting requests and waits for those in flight, at most
// until ctx is done; then it closes what is left.
func (s *Server) Shutdown(ctx context.Context) {
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
}

// Close closes the socket of a server that was never served.
func (s *Server) Close() { s.srv.Close(); s.ln.Close() }
