package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"gnld/capture"
	"gnld/internal/registry"
	"gnld/publish"
)

// Product changeover (GNLD_MODEL_ROOT). The PLC or MES publishes the
// product a camera sees now, retained, on gnl/<site>/<camera>/product: a
// plain name ("bracket-a") or JSON {"product": "bracket-a"}. The camera
// then scores with the bundle GNLD_MODEL_ROOT/<product>.
//
// The rule: no frame captured after the message arrived is scored by the
// old product's model. The message handler queues a changeover stamped
// with its arrival time and prepares the new scorer on its own goroutine
// (a bundle preloaded at start-up makes that a matter of a millisecond:
// a pipeline on the loaded, warmed-up interpreters); the
// camera's worker takes it before the first frame captured at or after
// that time, waiting for it if it is not ready yet. Frames captured
// before the message are scored by the old model even when they are
// scored after it. A product that cannot be served (unknown, a bundle
// that fails its checks) is refused with one log line and a counter, and
// from the changeover on the camera publishes its frames with verdict
// not_scored and the reason, until a product it can serve arrives.

// changeover is one product message for one camera.
type changeover struct {
	product string
	at      time.Time     // arrival: frames captured from then on are the new product's
	ready   chan struct{} // closed once s or err is set
	s       *scorer
	err     error
}

// maxProductMessage bounds a product message; a product name is at most 64 bytes.
const maxProductMessage = 4096

// parseProduct reads a product message: a plain name, or a JSON object
// with a "product" string. An empty payload (a retained message being
// cleared) gives "", which changes nothing.
func parseProduct(payload []byte) (string, error) {
	if len(payload) > maxProductMessage {
		return "", fmt.Errorf("%d bytes; a product message is a product name, or JSON {\"product\": NAME}", len(payload))
	}
	p := bytes.TrimSpace(payload)
	if len(p) == 0 {
		return "", nil
	}
	if p[0] == '{' {
		var m struct {
			Product *string `json:"product"`
		}
		if err := json.Unmarshal(p, &m); err != nil {
			return "", fmt.Errorf("not JSON: %v; send a product name, or JSON {\"product\": NAME}", err)
		}
		if m.Product == nil || strings.TrimSpace(*m.Product) == "" {
			return "", errors.New(`JSON without a "product" name; send {"product": NAME}`)
		}
		return strings.TrimSpace(*m.Product), nil
	}
	return string(p), nil
}

// productHandler receives camera c's product messages (paho's goroutine:
// it queues and returns; the load runs on a goroutine of its own).
func (d *daemon) productHandler(c *camera) publish.Handler {
	return func(payload []byte, retained bool, at time.Time) {
		product, err := parseProduct(payload)
		if err != nil {
			c.productBad.Add(1)
			d.log.Warn("product message not understood; the product in force stays", "camera", c.name,
				"topic", d.pub.Topic(c.name, "product"), "payload", clip(payload), "err", err)
			d.pub.StatsNow()
			return
		}
		if product == "" {
			return // a retained message cleared: keep the product in force
		}
		co := &changeover{product: product, at: at, ready: make(chan struct{})}
		c.changeMu.Lock()
		c.changes = append(c.changes, co)
		c.changeMu.Unlock()
		d.log.Info("product message", "camera", c.name, "product", product, "retained", retained)
		go d.prepare(c, co)
	}
}

// prepare makes changeover co's scorer from the registry (loading the
// bundle when it was not preloaded or has changed since) and closes
// co.ready. Reloads and changeovers take turns (reloadMu).
func (d *daemon) prepare(c *camera, co *changeover) {
	defer close(co.ready)
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	t0 := time.Now()
	base, err := registry.ProductDir(d.cfg.ModelRoot, co.product)
	dir := d.taughtOr(c.name, base) // the product's bundle, or what was taught to it (teach.go)
	preloaded := d.reg.Loaded(dir) != nil
	if err == nil {
		var l *registry.Loaded
		if l, err = d.reg.Get(dir, len(d.cams)); err == nil {
			if co.s, err = d.newScorer(l, c.cfg, co.product, false); err == nil {
				co.s.base = base
			}
		}
		if err != nil {
			err = fmt.Errorf("product %q (%s): %w", co.product, dir, err)
		}
	}
	if err != nil {
		co.err = err
		c.changeoversRefused.Add(1)
		d.log.Error("product changeover refused: the camera publishes its frames as not_scored until it gets a product it can serve",
			"camera", c.name, "product", co.product, "err", err)
		d.pub.StatsNow()
		return
	}
	c.changeovers.Add(1)
	d.log.Info("product changeover ready", "camera", c.name, "product", co.product, "model", co.s.model.Version,
		"preloaded", preloaded, "ready_ms", ms(time.Since(t0)))
}

// takeChange is the changeover frame f must be scored under: the last one
// whose message came before f was captured, waited for until ready;
// earlier ones are dropped unused. Nil when none applies to f.
func (c *camera) takeChange(f capture.Frame) *changeover {
	c.changeMu.Lock()
	k := -1
	for i, co := range c.changes {
		if !f.Time.Before(co.at) {
			k = i
		}
	}
	if k < 0 {
		c.changeMu.Unlock()
		return nil
	}
	take, drop := c.changes[k], c.changes[:k]
	c.changes = append([]*changeover(nil), c.changes[k+1:]...)
	c.changeMu.Unlock()
	for _, co := range drop {
		go func() { <-co.ready; co.s.close() }()
	}
	<-take.ready
	return take
}

// pendingChange reports whether camera c has changeovers not taken yet
// (a reload then leaves it alone: the changeover brings its own scorer).
func (c *camera) pendingChange() bool {
	c.changeMu.Lock()
	defer c.changeMu.Unlock()
	return len(c.changes) > 0
}

// closeChanges frees the scorers of changeovers never taken (shutdown).
func (c *camera) closeChanges() {
	c.changeMu.Lock()
	all := c.changes
	c.changes = nil
	c.changeMu.Unlock()
	for _, co := range all {
		<-co.ready
		co.s.close()
	}
}

// preloadProducts loads every bundle under GNLD_MODEL_ROOT, so that a
// changeover to it needs no load. A bundle that fails is logged and left
// out (a changeover to it is refused then); it does not stop gnld.
func (d *daemon) preloadProducts() {
	if d.cfg.ModelRoot == "" {
		return
	}
	products := registry.Products(d.cfg.ModelRoot)
	if len(products) == 0 {
		d.log.Warn("GNLD_MODEL_ROOT holds no product bundle (<root>/<product>/model.json); every changeover will be refused",
			"root", d.cfg.ModelRoot)
	}
	for _, p := range products {
		dir, _ := registry.ProductDir(d.cfg.ModelRoot, p)
		l, err := d.reg.Load(dir, len(d.cams))
		if err != nil {
			d.log.Error("product bundle not loaded; a changeover to it will be refused", "product", p, "err", err)
			continue
		}
		d.log.Info("product bundle preloaded", "product", p, "model", l.Bundle.Meta.Version,
			"interpreters", l.Model.Interpreters(), "load_ms", ms(l.Took.Total()))
	}
}
