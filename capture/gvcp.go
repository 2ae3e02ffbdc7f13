package capture

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// GigE Vision discovery (GVCP, UDP port 3956), in Go: a genicam source
// asks it whether its camera answers before it starts a pipeline, so that
// a missing camera fails in milliseconds (Aravis itself waits a second
// for a name, and 2.5 s for an address, before it gives up) and the error
// can list the cameras that did answer. It only reads what every GigE
// Vision camera broadcasts; it never takes control of a camera.

const (
	gvcpPort         = 3956
	gvcpDiscoveryCmd = 0x0002
	gvcpDiscoveryAck = 0x0003
	gvcpAckSize      = 8 + 0xf8 // header and bootstrap registers 0x0000-0x00f7
)

// gigeCamera is one DISCOVERY_ACK: what a camera says about itself.
type gigeCamera struct {
	Vendor, Model, Serial, UserName, MAC string
	IP                                   net.IP
}

// ID is Aravis's device id for the camera: vendor-model-serial.
func (c gigeCamera) ID() string { return arvStrip(c.Vendor + "-" + c.Model + "-" + c.Serial) }

// Matches reports whether Aravis's arv_open_device(id) would open this
// camera: by its device id, user-defined name, vendor-serial (also with
// Aravis's vendor alias), MAC or IP address (Aravis 0.8
// arv_gv_interface_open_device).
func (c gigeCamera) Matches(id string) bool {
	if id == "" {
		return false
	}
	alias := c.Vendor
	if a, ok := arvVendorAliases[c.Vendor]; ok {
		alias = a
	}
	for _, s := range []string{c.ID(), c.UserName, arvStrip(c.Vendor + "-" + c.Serial), arvStrip(alias + "-" + c.Serial), c.MAC} {
		if s != "" && s == id {
			return true
		}
	}
	ip := net.ParseIP(id)
	return ip != nil && ip.Equal(c.IP)
}

func (c gigeCamera) String() string { return fmt.Sprintf("%s (%s)", c.ID(), c.IP) }

// arvVendorAliases is Aravis's vendor alias table (arvmisc.c).
var arvVendorAliases = map[string]string{
	"The Imaging Source Europe GmbH": "TIS",
	"Point Grey Research":            "PointGrey",
	"Lucid Vision Labs":              "LucidVision",
	"New-Imaging-Technologies":       "NIT",
}

// arvStrip drops the characters Aravis drops from device ids
// (ARV_DEVICE_NAME_ILLEGAL_CHARACTERS: 0x01-0x0f and 0x11-0x1f).
func arvStrip(s string) string {
	return strings.Map(func(r rune) rune {
		if r > 0 && r < 0x20 && r != 0x10 {
			return -1
		}
		return r
	}, s)
}

// parseDiscoveryAck reads a DISCOVERY_ACK packet.
func parseDiscoveryAck(p []byte) (gigeCamera, error) {
	if len(p) < gvcpAckSize {
		return gigeCamera{}, fmt.Errorf("discovery ack of %d bytes, want %d", len(p), gvcpAckSize)
	}
	if binary.BigEndian.Uint16(p[2:]) != gvcpDiscoveryAck {
		return gigeCamera{}, fmt.Errorf("not a discovery ack (command 0x%04x)", binary.BigEndian.Uint16(p[2:]))
	}
	d := p[8:]
	str := func(off, n int) string {
		b := d[off : off+n]
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		return strings.ToValidUTF8(string(b), "?")
	}
	m := d[0x0a:0x10]
	c := gigeCamera{
		Vendor: str(0x48, 32), Model: str(0x68, 32), Serial: str(0xd8, 16), UserName: str(0xe8, 16),
		MAC: fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]),
		IP:  net.IPv4(d[0x24], d[0x25], d[0x26], d[0x27]),
	}
	if c.Serial == "" { // as Aravis does
		c.Serial = c.MAC
	}
	return c, nil
}

// discoveryCmd is a DISCOVERY_CMD that asks for the ack to be sent back
// to the sender (not broadcast).
var discoveryCmd = []byte{0x42, 0x01, 0x00, gvcpDiscoveryCmd, 0x00, 0x00, 0xff, 0xff}

// discoverGigE broadcasts a discovery from every IPv4 interface that is
// up (as Aravis does) and, when id is an IPv4 address, sends one to that
// address too. It returns as soon as a camera matching id answers (a
// non-empty id), or after wait with every camera that answered.
func discoverGigE(ctx context.Context, id string, wait time.Duration) ([]gigeCamera, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	type ack struct {
		cam     gigeCamera
		err     error
		unicast bool // err: the discovery sent to id's address was refused
	}
	acks := make(chan ack, 16)
	var conns []*net.UDPConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	listen := func(c *net.UDPConn, unicast bool) {
		conns = append(conns, c)
		go func() {
			buf := make([]byte, 1500)
			for {
				n, err := c.Read(buf)
				if err != nil {
					// A unicast discovery to an address with nothing on
					// port 3956 ends here at once (ICMP port unreachable).
					select {
					case acks <- ack{err: err, unicast: unicast}:
					case <-ctx.Done():
					}
					return
				}
				if cam, err := parseDiscoveryAck(buf[:n]); err == nil {
					select {
					case acks <- ack{cam: cam}:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
	}
	var sent int
	var lastErr error
	if ip := net.ParseIP(id).To4(); ip != nil {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: ip, Port: gvcpPort})
		if err == nil {
			if _, err = c.Write(discoveryCmd); err == nil {
				sent++
				listen(c, true)
			} else {
				c.Close()
			}
		}
		lastErr = err
	}
	for _, local := range localIPv4() {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: local})
		if err != nil {
			lastErr = err
			continue
		}
		if err := setBroadcast(c); err != nil {
			c.Close()
			lastErr = err
			continue
		}
		if _, err := c.WriteToUDP(discoveryCmd, &net.UDPAddr{IP: net.IPv4bcast, Port: gvcpPort}); err != nil {
			c.Close()
			lastErr = err
			continue
		}
		sent++
		listen(c, false)
	}
	if sent == 0 {
		return nil, fmt.Errorf("GigE Vision discovery: nothing sent: %v", lastErr)
	}
	var seen []gigeCamera
	for {
		select {
		case a := <-acks:
			if a.unicast {
				return seen, nil // nothing listens on port 3956 there
			}
			if a.err != nil {
				continue
			}
			if !slices.ContainsFunc(seen, func(c gigeCamera) bool { return c.MAC == a.cam.MAC && c.IP.Equal(a.cam.IP) }) {
				seen = append(seen, a.cam)
			}
			if a.cam.Matches(id) {
				return seen, nil
			}
		case <-ctx.Done():
			return seen, nil
		}
	}
}

// setBroadcast lets c send to 255.255.255.255.
func setBroadcast(c *net.UDPConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
	}); err != nil {
		return err
	}
	return serr
}

// localIPv4 is the address of every IPv4 interface that is up.
func localIPv4() []net.IP {
	ifs, _ := net.Interfaces()
	var out []net.IP
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
				out = append(out, n.IP.To4())
			}
		}
	}
	return out
}

// usb3VisionAttached reports whether a USB3 Vision device (interface class
// 0xEF, subclass 0x05) is plugged in, from sysfs. Discovery cannot see
// those; a genicam id that no GigE camera answers to may be one of them.
func usb3VisionAttached() bool {
	dirs, _ := filepath.Glob("/sys/bus/usb/devices/*/bInterfaceClass")
	for _, f := range dirs {
		class, _ := os.ReadFile(f)
		sub, _ := os.ReadFile(filepath.Join(filepath.Dir(f), "bInterfaceSubClass"))
		if strings.TrimSpace(string(class)) == "ef" && strings.TrimSpace(string(sub)) == "05" {
			return true
		}
	}
	return false
}

// errNotFound: no camera answers to a genicam source's id.
var errNotFound = errors.New("not found")
