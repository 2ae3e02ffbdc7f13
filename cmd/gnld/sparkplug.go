package main

import (
	"runtime/debug"

	"gnld/publish"
	"gnld/sparkplug"
)

// newSparkplug makes the Sparkplug B edge node (package sparkplug) when
// GNLD_SPARKPLUG=on, nil when off. It shares the broker settings of the
// JSON publisher, with a client ID of its own, and keeps its bdSeq file in
// the spool folder.
func (d *daemon) newSparkplug() (*sparkplug.Node, error) {
	c := d.cfg
	if c.Sparkplug != "on" {
		return nil, nil
	}
	tlsCfg, err := publish.TLSConfig(c.publishConfig())
	if err != nil {
		return nil, err
	}
	group := c.SparkplugGroup
	if group == "" {
		group = c.Site
	}
	devices := make([]string, len(c.cameras))
	for i, cc := range c.cameras {
		devices[i] = cc.name
	}
	return sparkplug.New(sparkplug.Config{
		Broker: c.MQTTBroker, ClientID: c.MQTTClientID + "-spb", Username: c.MQTTUsername, Password: c.MQTTPassword, TLS: tlsCfg,
		Group: group, Node: c.Device, Devices: devices,
		Properties: []sparkplug.Property{{Name: "Software", Value: "gnld"}, {Name: "Version", Value: buildVersion()}, {Name: "Run ID", Value: d.runID}},
		Timeout:    c.MQTTTimeout, ReconnectMax: c.MQTTReconnectMax, StateDir: c.SpoolDir,
	}, d.log)
}

// buildVersion is gnld's module version and VCS revision, as the Go
// toolchain recorded them; "" when unknown.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}
