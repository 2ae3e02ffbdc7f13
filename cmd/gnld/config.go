package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"image"
	"io"
	"log/slog"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/kelseyhightower/envconfig"

	"gnld/capture"
	"gnld/internal/httpserver"
	"gnld/models"
	"gnld/publish"
	"gnld/runtime"
)

// prefix starts every gnld environment variable.
const prefix = "GNLD"

// Config is gnld's configuration, read from GNLD_* environment variables.
// The tags are the documentation: docs/CONFIG.md is generated from them
// (go test ./cmd/gnld -run TestConfigDoc -update) and a test keeps the two
// equal. Per-camera variables are in CameraConfig.
//
// Config has no methods: loadConfig embeds it in a struct built at run
// time, which reflect only allows for types without methods.
type Config struct {
	Cameras        cameraList    `required:"true" doc_type:"List" desc:"Cameras, as name=source pairs separated by commas: line1=dir:/data/imgs,line2=/dev/video0. Names: lower-case letters, digits, _. Sources: /dev/videoN or v4l2:N, rtsp:// or http(s):// URL, gst:PIPELINE, genicam:CAMERA (a GigE Vision or USB3 Vision camera through Aravis, by its id, user name, serial, MAC or IP address), dir:FOLDER (images in name order), file:PATH or a video file path. A name alone takes its source from GNLD_CAMERA_<NAME>_SOURCE."`
	ModelDir       string        `split_words:"true" default:"/usr/share/gnld/model" desc:"Model bundle folder (model.json and model.tflite, see models/BUNDLE.md). SIGHUP reloads it without a restart; to change models, point a symbolic link at the new bundle's folder and rename it over this path."`
	ModelRoot      string        `split_words:"true" desc:"Folder of product bundles, one folder per product (<root>/<product>/model.json). Set: every camera follows the product its PLC or MES publishes (retained) on gnl/<site>/<camera>/product, a plain name or JSON {\"product\": NAME}, and scores with that product's bundle from the first frame captured after the message; until the first message a camera scores with its own model. Every product's bundle is loaded at start-up, so a changeover costs no load. A product that cannot be served is refused: the camera's results then say verdict not_scored and why, until a product it can serve. Empty: off."`
	ModelPubkeys   string        `envconfig:"MODEL_PUBKEYS" desc:"File of trusted Ed25519 public keys, one per line (KEY.pub from gnlctl keygen). Set: gnld serves only bundles signed by one of them (gnlctl sign), at start-up, on reload and at a product changeover; an unsigned bundle, one signed by another key or one whose files are not those signed is refused with one line, and the model in service keeps serving. Empty: bundles need no signature."`
	ModelWatch     time.Duration `split_words:"true" default:"0s" desc:"Check GNLD_MODEL_DIR this often and reload when its files have changed (and stayed unchanged for one period); 0: off, reload on SIGHUP only."`
	CalibrationDir string        `split_words:"true" default:"/var/lib/gnld/calibration" desc:"Folder of per-camera thresholds written by gnlctl calibrate (<camera>.json, or _all.json for every camera); read at start-up and on reload. A missing folder means no calibration."`
	Threads        int           `default:"1" desc:"TFLite CPU threads per interpreter, 1 to 256."`
	Interpreters   int           `default:"0" desc:"TFLite interpreters of the model, which all cameras share: a camera borrows one for each frame, so a further camera costs its frame buffers, not a copy of the model. 0: one per camera, at most one per GNLD_THREADS cores; 1 to 64: that many."`
	Delegate       string        `default:"xnnpack" desc:"Where TFLite runs the model: xnnpack (XNNPACK's CPU kernels, float and int8; empty or cpu mean the same), builtin (TFLite's builtin CPU kernels only), gpu (the OpenCL GPU delegate, XNNPACK for the operators it leaves; without a usable OpenCL GPU gnld runs on xnnpack and logs one warning naming the cause), or the path of a TFLite delegate plugin .so. A delegate that fails also falls back to xnnpack with a warning."`

	Site   string `default:"default" desc:"Site level of every MQTT topic: gnl/<site>/..."`
	Device string `desc:"Device level of the status and stats topics (gnl/<site>/<device>/status); empty: the host name."`

	MQTTBroker       string        `envconfig:"MQTT_BROKER" default:"tcp://127.0.0.1:1883" desc:"MQTT broker URL: tcp://, ssl://, tls://, mqtts://, ws:// or wss://."`
	MQTTClientID     string        `envconfig:"MQTT_CLIENT_ID" desc:"MQTT client ID, unique per device (a shared ID makes availability flap); empty: gnld-<device>."`
	MQTTUsername     string        `envconfig:"MQTT_USERNAME" desc:"MQTT user name."`
	MQTTPassword     string        `envconfig:"MQTT_PASSWORD" desc:"MQTT password; never logged nor shown."`
	MQTTCAFile       string        `envconfig:"MQTT_CA_FILE" desc:"PEM file of the CA that signed the broker's certificate; empty: the system's CAs."`
	MQTTCertFile     string        `envconfig:"MQTT_CERT_FILE" desc:"PEM client certificate for TLS client authentication (with GNLD_MQTT_KEY_FILE)."`
	MQTTKeyFile      string        `envconfig:"MQTT_KEY_FILE" desc:"PEM private key of GNLD_MQTT_CERT_FILE."`
	MQTTQoS          int           `envconfig:"MQTT_QOS" default:"1" desc:"QoS of results and maps: 0, 1 or 2. With 0 the broker does not acknowledge: a result sent as the connection drops is lost (while it is down, results are spooled at any QoS)."`
	MQTTTimeout      time.Duration `envconfig:"MQTT_TIMEOUT" default:"5s" desc:"Limit for connecting and for each acknowledgement; a result not acknowledged in time is spooled, and after 3 in a row the connection is made anew."`
	MQTTReconnectMax time.Duration `envconfig:"MQTT_RECONNECT_MAX" default:"2s" desc:"Cap of the MQTT reconnect backoff, which doubles from 1 s: gnld finds a broker that is back within about this long, however long it was away (make soak's target: median 2 s). One TCP connection per try."`

	Sparkplug      string `default:"off" desc:"on: also publish every result as Sparkplug B (docs/INTEGRATE.md#sparkplug-b): gnld is an edge node (GNLD_DEVICE) and each camera a device, with NBIRTH, DBIRTH, a DDATA per result, NDEATH as the Last Will and rebirth on Node Control/Rebirth, on a second connection to GNLD_MQTT_BROKER (client ID GNLD_MQTT_CLIENT_ID-spb). Results that come while it is disconnected are not sent there (the JSON topics, spooled, keep them). off: only the JSON topics."`
	SparkplugGroup string `split_words:"true" desc:"Sparkplug B group id (spBv1.0/<group>/...); empty: GNLD_SITE."`

	Map           string        `default:"off" desc:"Publish the anomaly map on gnl/<site>/<camera>/map: off, png (heat map over the frame) or raw (8-bit map, row-major). Never spooled nor retained."`
	StatsInterval time.Duration `split_words:"true" default:"60s" desc:"Period of the stats topic gnl/<site>/<device>/stats; 0 turns it off."`
	SpoolDir      string        `split_words:"true" default:"/var/lib/gnld/spool" desc:"Folder of results waiting for the broker (survives restarts); made 0700, its files 0600."`
	SpoolMax      int           `split_words:"true" default:"10000" desc:"Most results the spool keeps; when full the oldest are dropped, counted and logged."`

	TriggerQueue int `split_words:"true" default:"16" desc:"Triggers (GNLD_CAMERA_<NAME>_TRIGGER=mqtt) that may wait per camera while the model is busy, 1 to 10000; when full, further triggers are refused, counted (trigger.overflow in the stats topic) and logged."`

	ReadTimeout  time.Duration `split_words:"true" default:"10s" desc:"Capture watchdog: a source that gives no frame for this long is abandoned and reopened."`
	ReconnectMin time.Duration `split_words:"true" default:"1s" desc:"First delay before reopening a failed source; it doubles per failure."`
	ReconnectMax time.Duration `split_words:"true" default:"30s" desc:"Cap of the delay between source reopen attempts."`

	ExitWhenDone    bool          `split_words:"true" default:"true" desc:"Exit (status 0) once every camera has a finite source (folder or file without loop) that has ended and all results are published or spooled. false: keep running."`
	ShutdownTimeout time.Duration `split_words:"true" default:"10s" desc:"When stopping (SIGTERM, or every source ended): time to finish frames in flight and to publish spooled results, waiting for the broker if it is away. Results still unpublished then stay in the spool for the next run (exit status 0); cameras or pipelines that have not stopped by then make gnld exit with status 1."`
	LogLevel        slog.Level    `split_words:"true" default:"info" doc_type:"Level" desc:"debug (one line per frame), info, warn or error."`
	LogFormat       string        `split_words:"true" default:"text" desc:"text or json."`

	HTTPAddr string `envconfig:"HTTP_ADDR" doc_type:"HOST:PORT" desc:"HTTP listener for the technicians' page (/), /metrics, /healthz and /readyz; empty: off. A bare :PORT (or an empty host) listens on loopback 127.0.0.1 only; name a host (0.0.0.0:PORT, an interface's address) to be reachable from other machines."`

	HTTPTLSCert    string        `envconfig:"HTTP_TLS_CERT" desc:"PEM certificate (with its chain) for HTTPS on GNLD_HTTP_ADDR, with GNLD_HTTP_TLS_KEY; empty: plain HTTP. Read at start-up."`
	HTTPTLSKey     string        `envconfig:"HTTP_TLS_KEY" desc:"PEM private key of GNLD_HTTP_TLS_CERT."`
	HTTPUsers      string        `envconfig:"HTTP_USERS" desc:"Accounts file, made and changed with gnlctl user (add NAME --role viewer|operator|admin --file FILE). Set: the page and its API need a login; viewers see, operators also mark flagged parts and teach, admins also manage accounts. Empty: the live page is open to whoever reaches the listener, and nothing on it can change anything (no marks, no teaching)."`
	HTTPOpenProbes bool          `envconfig:"HTTP_OPEN_PROBES" default:"true" desc:"With GNLD_HTTP_USERS: /metrics, /healthz and /readyz stay open without a login, for scrapers and probes; false: they need a login too."`
	HTTPSessionTTL time.Duration `envconfig:"HTTP_SESSION_TTL" default:"8h" desc:"With GNLD_HTTP_USERS: a login ends after this long without a request, and after 24 h in any case; 1m to 24h."`
	HTTPAudit      string        `envconfig:"HTTP_AUDIT" desc:"With GNLD_HTTP_USERS: audit log of logins, marks, teachings and account changes, one JSON line each (made 0600); empty: the audit lines go to gnld's log."`

	EvidenceDir         string        `split_words:"true" desc:"Folder where every anomalous result, and every GNLD_EVIDENCE_NORMAL_EVERY-th normal one, is kept with its frame (after ROI and rotation), heat map and result, for the review page (/page/review.html) and gnlctl evidence; written off the inference path (a full queue drops and counts, never waits). Empty: off."`
	EvidenceMaxMB       int           `split_words:"true" default:"2000" desc:"Most megabytes the evidence folder holds; the oldest records go first (counted). 1 or more."`
	EvidenceMaxAge      time.Duration `split_words:"true" default:"720h" desc:"Evidence older than this is removed; 0: no age limit."`
	EvidenceNormalEvery int           `split_words:"true" default:"100" desc:"Keep every Nth normal result per camera as evidence too (anomalous ones are always kept); 0: none."`
	TeachDir            string        `split_words:"true" desc:"Folder of taught model versions (<camera>/<version>/): an operator's teaching of a false alarm on the review page writes one, and the camera serves it from its next frame (undo serves the one before; a restart serves the last again). Needs GNLD_EVIDENCE_DIR and GNLD_HTTP_USERS. Empty: teaching off."`

	PageHistory    time.Duration `split_words:"true" default:"10m" desc:"Score history that the technicians' page (http://GNLD_HTTP_ADDR/) plots per camera, one point per second; 1s to 24h."`
	DriftEvery     int           `split_words:"true" default:"2" desc:"Drift monitor: measure every Nth frame of each camera against the training images' statistics in the bundle's drift.json (about a millisecond per sample, on a 128x128 copy); 0 turns it off. A bundle without drift.json runs without it (said once in the log)."`
	DriftWindow    int           `split_words:"true" default:"20" desc:"Drift monitor: samples whose median makes a camera's drift score, so only a change that holds for half of them counts; 2 to 1000."`
	DriftThreshold float64       `split_words:"true" default:"3" desc:"Drift monitor: drift score (in training spreads) at which a camera's state turns to warning, once it has held for 3 samples in a row; it returns to ok below two thirds of it, again after 3 samples."`

	// Filled by loadConfig from GNLD_CAMERA_<NAME>_* variables, in the order
	// of Cameras.
	cameras []CameraConfig
	// httpListen is HTTPAddr resolved (loopback for a bare :PORT); "": off.
	httpListen string
	// pubkeys are ModelPubkeys' keys; nil: bundles need no signature.
	pubkeys []ed25519.PublicKey
}

// CameraConfig holds one camera's GNLD_CAMERA_<NAME>_* variables.
type CameraConfig struct {
	Model     string   `desc:"The camera's model bundle folder, when it is not GNLD_MODEL_DIR's: a station's top and side cameras, or two lines with different parts, each with its own model. Cameras on the same folder share one loaded model."`
	Source    string   `desc:"The camera's source; overrides GNLD_CAMERAS. Use it for sources that contain commas, such as GStreamer pipelines."`
	Threshold *float64 `doc_type:"Float" desc:"Anomaly threshold (score >= threshold is anomalous); unset: the camera's calibration (gnlctl calibrate) if made with the bundle in service, else threshold.value of the bundle."`
	ROI       roi      `doc_type:"X,Y,W,H" desc:"Crop to this rectangle, in pixels, before rotation; empty or unset: the whole frame."`
	Rotate    int      `default:"0" desc:"Rotate frames clockwise by 0, 90, 180 or 270 degrees."`
	Loop      bool     `default:"false" desc:"Start a folder or video file again when it ends."`
	Live      *bool    `doc_type:"True or False" desc:"true: keep only the newest frame when the model is slower than the source (drops counted); false: process every frame in order. Unset: true for devices and streams, false for folders and files."`
	FPS       float64  `default:"0" desc:"Read at most this many frames per second; 0: as fast as the source gives them."`
	Trigger   string   `default:"off" desc:"off: score every frame. mqtt: score only the first frame captured after each message on gnl/<site>/<camera>/trigger (JSON with part_id, or a plain id); the camera stays open. A genicam: camera is set to software trigger instead: each message fires the camera's trigger and the one frame it gives answers it (docs/INTEGRATE.md)."`

	// genicam: sources only (capture.Genicam); unset: the camera's own.
	PixelFormat string   `split_words:"true" desc:"genicam: sources: the camera's pixel format, a GenICam name: Mono8, Mono16, RGB8, YUV422_8_UYVY, YUV422_8, BayerRG8, BayerGR8, BayerGB8 or BayerBG8 (frames reach the model as BGR); empty: the camera's current one. A format the camera does not offer is refused (one line, counted as refused in the stats topic) and the camera retried."`
	ExposureUS  float64  `split_words:"true" default:"0" desc:"genicam: sources: exposure time in microseconds (auto exposure off); 0: the camera's. Checked against the camera's bounds (needs arv-tool-0.8) and refused like the pixel format."`
	GainDB      *float64 `split_words:"true" doc_type:"Float" desc:"genicam: sources: gain in dB, 0 to 500 (auto gain off); unset: the camera's. Checked and refused like the exposure."`
	FrameRate   float64  `split_words:"true" default:"0" desc:"genicam: sources: the camera's acquisition frame rate in Hz (AcquisitionFrameRate); 0: the camera's. Checked and refused like the exposure. GNLD_CAMERA_<NAME>_FPS caps the frames gnld reads; this sets how many the camera takes."`

	name       string
	sourceFrom string // the variable Source came from, for errors
	spec       capture.Spec
}

// cameraEntry is one name[=source] item of GNLD_CAMERAS.
type cameraEntry struct{ name, source string }

// cameraList is the value of GNLD_CAMERAS.
type cameraList []cameraEntry

var cameraName = regexp.MustCompile(`^[a-z0-9][a-z0-9_]*$`)

// Decode implements envconfig.Decoder.
func (l *cameraList) Decode(v string) error {
	*l = nil
	seen := map[string]bool{}
	for item := range strings.SplitSeq(v, ",") {
		name, source, _ := strings.Cut(strings.TrimSpace(item), "=")
		if !cameraName.MatchString(name) {
			return fmt.Errorf("camera name %q: expected lower-case letters, digits and _", name)
		}
		if seen[name] {
			return fmt.Errorf("camera %q named twice", name)
		}
		seen[name] = true
		*l = append(*l, cameraEntry{name, source})
	}
	return nil
}

// maxROI bounds each number of a crop rectangle (OpenCV's largest image
// side), so that X+W cannot overflow.
const maxROI = 1 << 20

// roi is a crop rectangle written X,Y,W,H.
type roi struct{ image.Rectangle }

// Decode implements envconfig.Decoder.
func (r *roi) Decode(v string) error {
	if v == "" {
		r.Rectangle = image.Rectangle{}
		return nil
	}
	var n [4]int
	parts := strings.Split(v, ",")
	ok := len(parts) == 4
	for i := 0; ok && i < 4; i++ {
		var err error
		n[i], err = strconv.Atoi(strings.TrimSpace(parts[i]))
		ok = err == nil && n[i] >= 0 && (i < 2 || n[i] > 0) && n[i] <= maxROI
	}
	if !ok {
		return fmt.Errorf("expected X,Y,W,H: four whole numbers up to %d, X,Y >= 0, W,H > 0", maxROI)
	}
	r.Rectangle = image.Rect(n[0], n[1], n[0]+n[2], n[1]+n[3])
	return nil
}

// spec returns a struct pointer for envconfig that holds cfg (embedded,
// so its keys keep the GNLD_ prefix) and one CameraConfig per camera under
// CAMERA_<NAME>. envconfig then reads, checks and documents per-camera
// variables exactly like the others: CheckDisallowed rejects a misspelled
// GNLD_CAMERA_LINE1_THRESOLD as it does GNLD_THREDS.
func spec(cfg *Config, names []string) reflect.Value {
	fields := []reflect.StructField{{Name: "Config", Type: reflect.TypeFor[Config](), Anonymous: true}}
	for i, name := range names {
		fields = append(fields, reflect.StructField{
			Name: fmt.Sprintf("Camera%d", i),
			Type: reflect.TypeFor[CameraConfig](),
			Tag:  reflect.StructTag(fmt.Sprintf(`envconfig:"CAMERA_%s"`, strings.ToUpper(name))),
		})
	}
	v := reflect.New(reflect.StructOf(fields))
	v.Elem().Field(0).Set(reflect.ValueOf(*cfg))
	return v
}

// loadConfig reads the GNLD_* environment. Its errors are one line that
// names the variable, the bad value and what is expected.
func loadConfig() (*Config, error) {
	var cfg Config
	if err := envconfig.Process(prefix, &cfg); err != nil {
		return nil, explain(err)
	}
	names := make([]string, len(cfg.Cameras))
	for i, c := range cfg.Cameras {
		names[i] = c.name
	}
	all := spec(&cfg, names)
	if err := envconfig.CheckDisallowed(prefix, all.Interface()); err != nil {
		// "unknown environment variable NAME"; a NAME with a line break
		// would break the one-line error, so it is quoted then.
		msg := err.Error()
		if name, ok := strings.CutPrefix(msg, "unknown environment variable "); ok && strings.ContainsFunc(name, unicode.IsControl) {
			msg = "unknown environment variable " + strconv.Quote(name)
		}
		return nil, fmt.Errorf("%s: not a gnld setting (misspelled, or a camera not in GNLD_CAMERAS?); see docs/CONFIG.md", msg)
	}
	if err := envconfig.Process(prefix, all.Interface()); err != nil {
		return nil, explain(err)
	}
	for i, c := range cfg.Cameras {
		cc := all.Elem().Field(i + 1).Interface().(CameraConfig)
		cc.name = c.name
		cc.sourceFrom = prefix + "_CAMERA_" + strings.ToUpper(c.name) + "_SOURCE"
		if cc.Source == "" {
			cc.Source, cc.sourceFrom = c.source, prefix+"_CAMERAS"
		}
		cfg.cameras = append(cfg.cameras, cc)
	}
	if err := validate(&cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// invalid is the error for a value of the right type that gnld cannot use.
func invalid(key string, value any, expected string) error {
	return fmt.Errorf("%s_%s=%q: expected %s", prefix, key, fmt.Sprint(value), expected)
}

// explain turns envconfig's errors into one readable line.
func explain(err error) error {
	var pe *envconfig.ParseError
	if !errors.As(err, &pe) {
		// "required key GNLD_CAMERAS missing value"
		return fmt.Errorf("%w; see docs/CONFIG.md", err)
	}
	var expected string
	switch pe.TypeName {
	case "int", "*int":
		expected = "a whole number"
	case "float64", "*float64":
		expected = "a number"
	case "bool", "*bool":
		expected = "true or false"
	case "time.Duration":
		expected = "a duration such as 500ms, 10s or 2m"
	case "slog.Level":
		expected = "debug, info, warn or error"
	default: // gnld's own types say what they expect
		return fmt.Errorf("%s=%q: %v", pe.KeyName, pe.Value, pe.Err)
	}
	return fmt.Errorf("%s=%q: expected %s", pe.KeyName, pe.Value, expected)
}

// validate checks values that parsed but are out of range, and fills in
// the defaults that depend on others.
func validate(c *Config) error {
	if c.Device == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("GNLD_DEVICE is empty and the host name is unknown: %w", err)
		}
		c.Device = host
	}
	if c.MQTTClientID == "" {
		c.MQTTClientID = "gnld-" + c.Device
	}
	positive := []struct {
		key string
		d   time.Duration
	}{
		{"MQTT_TIMEOUT", c.MQTTTimeout}, {"MQTT_RECONNECT_MAX", c.MQTTReconnectMax},
		{"READ_TIMEOUT", c.ReadTimeout}, {"RECONNECT_MIN", c.ReconnectMin},
		{"RECONNECT_MAX", c.ReconnectMax}, {"SHUTDOWN_TIMEOUT", c.ShutdownTimeout},
	}
	for _, p := range positive {
		if p.d <= 0 {
			return invalid(p.key, p.d, "a duration above 0")
		}
	}
	switch {
	case !publish.ValidName(c.Site):
		return invalid("SITE", c.Site, "a name without / + #")
	case !publish.ValidName(c.Device):
		return invalid("DEVICE", c.Device, "a name without / + #")
	case c.Threads < 1 || c.Threads > 256:
		return invalid("THREADS", c.Threads, "1 to 256")
	case c.Interpreters < 0 || c.Interpreters > 64:
		return invalid("INTERPRETERS", c.Interpreters, "0 (one per camera, at most one per GNLD_THREADS cores) to 64")
	case !validDelegate(c.Delegate):
		return invalid("DELEGATE", c.Delegate, "xnnpack, builtin, gpu or the path of a TFLite delegate plugin .so")
	case c.MQTTQoS < 0 || c.MQTTQoS > 2:
		return invalid("MQTT_QOS", c.MQTTQoS, "0, 1 or 2")
	case c.Sparkplug != "off" && c.Sparkplug != "on":
		return invalid("SPARKPLUG", c.Sparkplug, "off or on")
	case c.SparkplugGroup != "" && !publish.ValidName(c.SparkplugGroup):
		return invalid("SPARKPLUG_GROUP", c.SparkplugGroup, "a name without / + #, or empty (GNLD_SITE)")
	case c.Map != "off" && c.Map != "png" && c.Map != "raw":
		return invalid("MAP", c.Map, "off, png or raw")
	case c.StatsInterval < 0:
		return invalid("STATS_INTERVAL", c.StatsInterval, "0 (off) or a duration")
	case c.SpoolMax < 1:
		return invalid("SPOOL_MAX", c.SpoolMax, "1 or more")
	case c.TriggerQueue < 1 || c.TriggerQueue > 10000:
		return invalid("TRIGGER_QUEUE", c.TriggerQueue, "1 to 10000")
	case c.ModelWatch < 0:
		return invalid("MODEL_WATCH", c.ModelWatch, "0 (off) or a duration")
	case c.ReconnectMax < c.ReconnectMin:
		return invalid("RECONNECT_MAX", c.ReconnectMax, "at least GNLD_RECONNECT_MIN")
	case c.LogFormat != "text" && c.LogFormat != "json":
		return invalid("LOG_FORMAT", c.LogFormat, "text or json")
	case (c.MQTTCertFile == "") != (c.MQTTKeyFile == ""):
		return invalid("MQTT_KEY_FILE", c.MQTTKeyFile, "set together with GNLD_MQTT_CERT_FILE")
	}
	switch {
	case c.PageHistory < time.Second || c.PageHistory > 24*time.Hour:
		return invalid("PAGE_HISTORY", c.PageHistory, "a duration from 1s to 24h")
	case c.DriftEvery < 0:
		return invalid("DRIFT_EVERY", c.DriftEvery, "0 (off) or a whole number of frames")
	case c.DriftWindow < 2 || c.DriftWindow > 1000:
		return invalid("DRIFT_WINDOW", c.DriftWindow, "2 to 1000 samples")
	case !(c.DriftThreshold > 0) || math.IsInf(c.DriftThreshold, 1):
		return invalid("DRIFT_THRESHOLD", c.DriftThreshold, "a number above 0")
	}
	if c.ModelPubkeys != "" {
		keys, err := models.ReadPublicKeys(c.ModelPubkeys)
		if err != nil {
			return fmt.Errorf("GNLD_MODEL_PUBKEYS=%s: %w", c.ModelPubkeys, err)
		}
		c.pubkeys = keys
	}
	if c.ModelRoot != "" {
		if st, err := os.Stat(c.ModelRoot); err != nil || !st.IsDir() {
			return invalid("MODEL_ROOT", c.ModelRoot, "an existing folder holding one bundle folder per product (<root>/<product>/model.json), or empty (off)")
		}
	}
	switch {
	case (c.HTTPTLSCert == "") != (c.HTTPTLSKey == ""):
		return invalid("HTTP_TLS_KEY", c.HTTPTLSKey, "set together with GNLD_HTTP_TLS_CERT")
	case c.HTTPSessionTTL < time.Minute || c.HTTPSessionTTL > 24*time.Hour:
		return invalid("HTTP_SESSION_TTL", c.HTTPSessionTTL, "a duration from 1m to 24h")
	case c.EvidenceMaxMB < 1:
		return invalid("EVIDENCE_MAX_MB", c.EvidenceMaxMB, "1 or more")
	case c.EvidenceMaxAge < 0:
		return invalid("EVIDENCE_MAX_AGE", c.EvidenceMaxAge, "0 (no limit) or a duration")
	case c.EvidenceNormalEvery < 0:
		return invalid("EVIDENCE_NORMAL_EVERY", c.EvidenceNormalEvery, "0 (none) or a whole number")
	case c.TeachDir != "" && (c.EvidenceDir == "" || c.HTTPUsers == ""):
		return invalid("TEACH_DIR", c.TeachDir, "empty, or set with GNLD_EVIDENCE_DIR (the frames to teach) and GNLD_HTTP_USERS (who teaches)")
	case c.HTTPUsers != "" && c.HTTPAddr == "":
		return invalid("HTTP_USERS", c.HTTPUsers, "empty, or set with GNLD_HTTP_ADDR (the listener the accounts log in to)")
	}
	listen, _, err := httpserver.Resolve(c.HTTPAddr)
	if err != nil {
		return invalid("HTTP_ADDR", c.HTTPAddr, "HOST:PORT such as :9464 (loopback) or 0.0.0.0:9464, or empty (off)")
	}
	c.httpListen = listen
	for i := range c.cameras {
		cc := &c.cameras[i]
		key := "CAMERA_" + strings.ToUpper(cc.name) + "_"
		if cc.Source == "" {
			return invalid(key+"SOURCE", "", "a source, here or as "+cc.name+"=SOURCE in GNLD_CAMERAS")
		}
		s, err := capture.ParseSource(cc.Source)
		if err != nil {
			return fmt.Errorf("%s: camera %s: %w; expected /dev/videoN, v4l2:N, rtsp://, http(s)://, gst:PIPELINE, genicam:CAMERA, dir:FOLDER or a video file", cc.sourceFrom, cc.name, err)
		}
		cc.spec = s
		switch {
		case cc.Threshold != nil && (!(*cc.Threshold > 0) || math.IsInf(*cc.Threshold, 1)):
			return invalid(key+"THRESHOLD", *cc.Threshold, "a number above 0")
		case cc.Rotate != 0 && cc.Rotate != 90 && cc.Rotate != 180 && cc.Rotate != 270:
			return invalid(key+"ROTATE", cc.Rotate, "0, 90, 180 or 270")
		case !(cc.FPS >= 0) || math.IsInf(cc.FPS, 1): // NaN too
			return invalid(key+"FPS", cc.FPS, "0 (no limit) or more")
		case cc.Loop && !s.Finite():
			return invalid(key+"LOOP", cc.Loop, "false for a device or stream (only folders and files end)")
		case cc.Trigger != "off" && cc.Trigger != "mqtt":
			return invalid(key+"TRIGGER", cc.Trigger, "off or mqtt")
		}
		if err := validateGenicam(cc, key); err != nil {
			return err
		}
	}
	return nil
}

// captureConfig is what package capture needs for camera i.
func (c *Config) captureConfig(i int) capture.Config {
	cc := c.cameras[i]
	live := !cc.spec.Finite()
	if cc.Live != nil {
		live = *cc.Live
	}
	return capture.Config{
		Name: cc.name, Source: cc.spec, Live: live, Loop: cc.Loop, FPS: cc.FPS,
		ROI: cc.ROI.Rectangle, Rotate: cc.Rotate,
		ReadTimeout: c.ReadTimeout, BackoffMin: c.ReconnectMin, BackoffMax: c.ReconnectMax,
		Genicam:         genicamSettings(cc),
		SoftwareTrigger: cc.spec.Kind == capture.KindGenicam && cc.Trigger == "mqtt",
	}
}

// genicamSettings is a camera's genicam settings for package capture.
func genicamSettings(cc CameraConfig) capture.Genicam {
	return capture.Genicam{PixelFormat: cc.PixelFormat, ExposureUS: cc.ExposureUS, GainDB: cc.GainDB, FrameRate: cc.FrameRate}
}

// validateGenicam checks a camera's genicam settings: only genicam:
// sources take them, and each must be one aravissrc can send.
func validateGenicam(cc *CameraConfig, key string) error {
	if cc.spec.Kind != capture.KindGenicam {
		for _, s := range []struct {
			name string
			set  bool
			v    any
		}{
			{"PIXEL_FORMAT", cc.PixelFormat != "", cc.PixelFormat}, {"EXPOSURE_US", cc.ExposureUS != 0, cc.ExposureUS},
			{"GAIN_DB", cc.GainDB != nil, cc.GainDB}, {"FRAME_RATE", cc.FrameRate != 0, cc.FrameRate},
		} {
			if s.set {
				if p, ok := s.v.(*float64); ok {
					s.v = *p
				}
				return invalid(key+s.name, s.v, "unset: only genicam: sources (GigE Vision and USB3 Vision cameras) take camera settings; this camera's source is "+string(cc.spec.Kind))
			}
		}
		return nil
	}
	switch {
	case cc.PixelFormat != "" && !slices.Contains(capture.PixelFormats(), cc.PixelFormat):
		return invalid(key+"PIXEL_FORMAT", cc.PixelFormat, "empty (the camera's) or one of "+strings.Join(capture.PixelFormats(), ", "))
	case !(cc.ExposureUS >= 0) || cc.ExposureUS > 1e8:
		return invalid(key+"EXPOSURE_US", cc.ExposureUS, "0 (the camera's) or an exposure time in microseconds up to 1e8")
	case cc.GainDB != nil && (!(*cc.GainDB >= 0) || *cc.GainDB > 500):
		return invalid(key+"GAIN_DB", *cc.GainDB, "unset (the camera's) or a gain of 0 to 500 dB")
	case !(cc.FrameRate >= 0) || cc.FrameRate > 1e6:
		return invalid(key+"FRAME_RATE", cc.FrameRate, "0 (the camera's) or a frame rate in Hz up to 1e6")
	}
	return nil
}

// publishConfig is what package publish needs.
func (c *Config) publishConfig() publish.Config {
	return publish.Config{
		Broker: c.MQTTBroker, ClientID: c.MQTTClientID, Username: c.MQTTUsername, Password: c.MQTTPassword,
		CAFile: c.MQTTCAFile, CertFile: c.MQTTCertFile, KeyFile: c.MQTTKeyFile, QoS: byte(c.MQTTQoS),
		Site: c.Site, Device: c.Device, Timeout: c.MQTTTimeout, ReconnectMax: c.MQTTReconnectMax,
		SpoolDir: c.SpoolDir, SpoolMax: c.SpoolMax, StatsInterval: c.StatsInterval,
	}
}

// docTable is the Markdown table of docs/CONFIG.md, and (as plain text)
// gnld -h.
const docTable = "| Variable | Type | Default | Description |\n|---|---|---|---|\n" +
	"{{range .}}| `{{usage_key .}}` | {{or (.Tags.Get \"doc_type\") (usage_type .)}} | {{with usage_default .}}`{{.}}`{{else}}{{if usage_required .}}required{{end}}{{end}} | {{usage_description .}} |\n{{end}}"

const helpTable = "{{range .}}{{usage_key .}}\t{{with usage_default .}}{{.}}{{else}}{{if usage_required .}}(required){{end}}{{end}}\t{{usage_description .}}\n{{end}}"

// writeDoc writes the variables of Config and of one camera (named
// <NAME>) in format: docTable or helpTable.
func writeDoc(w io.Writer, format string) error {
	if err := envconfig.Usagef(prefix, &Config{}, w, format); err != nil {
		return err
	}
	if format == docTable { // a second table for the per-camera variables
		fmt.Fprint(w, "\nPer camera, with `<NAME>` the camera's name in upper case:\n\n")
	}
	return envconfig.Usagef(prefix+"_CAMERA_<NAME>", &CameraConfig{}, w, format)
}

// usage prints gnld -h.
func usage(w io.Writer) {
	fmt.Fprint(w, "gnld: anomaly detection beside production-line cameras, results over MQTT.\n\nConfigured by environment variables (docs/CONFIG.md):\n\n")
	tw := tabwriter.NewWriter(w, 1, 0, 2, ' ', 0)
	writeDoc(tw, helpTable)
	tw.Flush()
}

func validDelegate(d string) bool {
	_, err := runtime.ParseDelegate(d)
	return err == nil
}
