package httpserver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestResolve(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"", "", ""},
		{":9464", "127.0.0.1:9464", ""},
		{"0.0.0.0:9464", "0.0.0.0:9464", ""},
		{"[::1]:80", "[::1]:80", ""},
		{"localhost:http", "localhost:http", ""},
		{"9464", "", "missing port"},
		{"host:", "", "bad port"},
		{":99999", "", "bad port"},
	} {
		got, ok, err := Resolve(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Resolve(%q): err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want || ok != (tc.in != "") {
			t.Errorf("Resolve(%q) = %q %v %v, want %q", tc.in, got, ok, err, tc.want)
		}
	}
}

// A bare port listens on loopback only, serves what is registered on Mux
// over real HTTP, and stops on Shutdown.
func TestListenServeShutdown(t *testing.T) {
	addr, _, _ := Resolve(":0")
	s, err := Listen(addr, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if ip := s.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		t.Errorf("listening on %v, want loopback", ip)
	}
	s.Mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") })
	done := make(chan struct{})
	go func() { s.Serve(); close(done) }()
	resp, err := http.Get("http://" + s.Addr().String() + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "hi" {
		t.Errorf("GET /hello: %d %q", resp.StatusCode, b)
	}
	if resp, err := http.Get("http://" + s.Addr().String() + "/nope"); err != nil || resp.StatusCode != 404 {
		t.Errorf("GET /nope: %v %v, want 404", resp, err)
	}
	// The port is taken now: a second listener says so.
	if _, err := Listen(s.Addr().String(), slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("second listener on %s: %v, want address already in use", s.Addr(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.Shutdown(ctx)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
	if _, err := http.Get("http://" + s.Addr().String() + "/hello"); err == nil {
		t.Error("still answering after Shutdown")
	}
}
