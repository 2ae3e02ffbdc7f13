// Command gnld is the anomaly-detection daemon that runs beside
// production-line cameras: it captures frames (package capture), scores
// them with a model bundle (package pipeline) and publishes the results
// over MQTT (package publish). It is configured by GNLD_* environment
// variables (docs/CONFIG.md; gnld -h).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gnld:", err)
		os.Exit(1)
	}
}
