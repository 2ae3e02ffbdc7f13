package packaging

import (
	"os/exec"
	"regexp"
	"strconv"
	"testing"
)

// maxExposure is the exposure score systemd-analyze security gives
// systemd/gnld.service (0 is the most locked-down, 10 the least; systemd
// calls below 2 "OK"). A change to the unit that raises it fails here:
// lower the figure when you harden the unit further.
const maxExposure = 1.5

// The unit's sandboxing, as systemd itself scores it (offline: the unit
// file alone, no running service).
func TestUnitSecurity(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not found: run in the build root (make test), which has systemd")
	}
	out, err := exec.Command("systemd-analyze", "security", "--offline=yes", "--no-pager", "../systemd/gnld.service").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for gnld\.service: (\d+\.\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("exposure %.1f (limit %.1f)", score, maxExposure)
	if score > maxExposure {
		t.Errorf("systemd/gnld.service exposure %.1f, above %.1f: a hardening setting was lost\n%s", score, maxExposure, out)
	}
}
