// Package deps pins gnld's direct dependencies until the packages that use
// them land. Delete once every import below is used elsewhere.
package deps

import (
	_ "github.com/eclipse/paho.mqtt.golang"
	_ "github.com/kelseyhightower/envconfig"
	_ "github.com/mattn/go-tflite"
	_ "gocv.io/x/gocv"
)
