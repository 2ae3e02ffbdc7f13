module gnld

go 1.26

require (
	github.com/eclipse/paho.mqtt.golang v1.5.1
	github.com/kelseyhightower/envconfig v1.4.0
	github.com/mattn/go-tflite v1.0.5
	gocv.io/x/gocv v0.38.0
	golang.org/x/sync v0.17.0
)

require (
	github.com/gorilla/websocket v1.5.3 // indirect
	github.com/mattn/go-pointer v0.0.1 // indirect
	golang.org/x/net v0.44.0 // indirect
)
