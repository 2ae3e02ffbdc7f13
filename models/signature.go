package models

// Signed bundles. A bundle's maker signs it with an Ed25519 key (gnlctl
// keygen, gnlctl sign): signature.json in the bundle lists the SHA-256 of
// each of its files and an Ed25519 signature over that list. gnld, given
// trusted public keys (GNLD_MODEL_PUBKEYS), loads a bundle only through
// LoadSigned, which refuses a bundle without a signature, one signed by a
// key it does not trust, and one whose files gnld reads (model.json, the
// model file, drift.json) are not those signed. The bytes checked are the
// bytes loaded: model.json and drift.json are hashed as they are read and
// parsed, and the model file's hash is the one Load compares with
// model.json's model_sha256.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// SignatureFile is the signature's name in a bundle folder.
const SignatureFile = "signature.json"

// SignatureVersion is the signature format this gnld reads and writes.
const SignatureVersion = 1

// signatureContext starts the signed text, so that a signature over a
// bundle can never be taken for one over anything else.
const signatureContext = "gnld bundle signature v1\n"

const signFix = "sign the bundle with `gnlctl sign --key KEY.key BUNDLE` (its maker's key), or unset GNLD_MODEL_PUBKEYS"

// Signature is signature.json.
type Signature struct {
	FormatVersion int               `json:"format_version"`
	KeyID         string            `json:"key_id"`    // KeyID of the signing key
	Files         map[string]string `json:"files"`     // file name -> SHA-256, hex
	Signature     string            `json:"signature"` // base64 Ed25519 signature of manifest(Files)
}

var (
	sigFileName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	sha256Hex   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	keyIDHex    = regexp.MustCompile(`^[0-9a-f]{16}$`)
)

// KeyID names a public key: the first 8 bytes of its SHA-256, hex.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// manifest is the signed text: the context line, then "name sha256" per
// file in name order.
func manifest(files map[string]string) []byte {
	var b bytes.Buffer
	b.WriteString(signatureContext)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "%s %s\n", n, files[n])
	}
	return b.Bytes()
}

// ParseSignature reads and checks signature.json's form (not the signature).
func ParseSignature(data []byte) (*Signature, error) {
	var s Signature
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("not a bundle signature (%v)", err)
	}
	switch {
	case s.FormatVersion != SignatureVersion:
		return nil, fmt.Errorf("format_version %d, this gnld reads %d", s.FormatVersion, SignatureVersion)
	case !keyIDHex.MatchString(s.KeyID):
		return nil, fmt.Errorf("key_id %q is not 16 hex digits", clipString(s.KeyID))
	case len(s.Files) == 0:
		return nil, errors.New("it lists no files")
	}
	for name, sum := range s.Files {
		if !sigFileName.MatchString(name) || name == SignatureFile {
			return nil, fmt.Errorf("file name %q: not a file of the bundle folder", clipString(name))
		}
		if !sha256Hex.MatchString(sum) {
			return nil, fmt.Errorf("file %s: %q is not a SHA-256 in lower-case hex", name, clipString(sum))
		}
	}
	if sig, err := base64.StdEncoding.DecodeString(s.Signature); err != nil || len(sig) != ed25519.SignatureSize {
		return nil, errors.New("signature is not a base64 Ed25519 signature (64 bytes)")
	}
	return &s, nil
}

// ParsePublicKeys reads trusted keys: one per line, base64 of the 32-byte
// Ed25519 public key, optionally followed by a space and a comment (as
// gnlctl keygen writes KEY.pub); empty lines and lines starting with #
// are skipped.
func ParsePublicKeys(data []byte) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		field, _, _ := strings.Cut(line, " ")
		k, err := base64.StdEncoding.DecodeString(field)
		if err != nil || len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("line %d: not a base64 Ed25519 public key (32 bytes), as `gnlctl keygen` writes in KEY.pub", i+1)
		}
		keys = append(keys, ed25519.PublicKey(k))
	}
	if len(keys) == 0 {
		return nil, errors.New("no public key in it; add the bundle maker's KEY.pub line (gnlctl keygen writes it)")
	}
	return keys, nil
}

// ReadPublicKeys is ParsePublicKeys on a file.
func ReadPublicKeys(path string) ([]ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	keys, err := ParsePublicKeys(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// Sign writes dir/signature.json, signed with priv, over every regular
// file in dir but the signature itself, and returns it.
func Sign(dir string, priv ed25519.PrivateKey) (*Signature, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Signature{FormatVersion: SignatureVersion, KeyID: KeyID(priv.Public().(ed25519.PublicKey)), Files: map[string]string{}}
	for _, e := range entries {
		if e.Name() == SignatureFile || !sigFileName.MatchString(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if st, err := os.Stat(path); err != nil || !st.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(data)
		s.Files[e.Name()] = hex.EncodeToString(sum[:])
	}
	if _, ok := s.Files[MetaFile]; !ok {
		return nil, fmt.Errorf("%s: no %s; sign a bundle folder", dir, MetaFile)
	}
	s.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(priv, manifest(s.Files)))
	out, _ := json.MarshalIndent(s, "", "  ")
	tmp := filepath.Join(dir, SignatureFile+".tmp")
	if err := os.WriteFile(tmp, append(out, '\n'), 0o644); err != nil {
		return nil, err
	}
	return s, os.Rename(tmp, filepath.Join(dir, SignatureFile))
}

// verifier checks the files Load reads against a verified signature.
type verifier struct {
	path  string // signature.json, for errors
	files map[string]string
}

// signed reports whether name is in the signature (false without one).
func (v *verifier) signed(name string) (string, bool) {
	if v == nil {
		return "", false
	}
	sum, ok := v.files[name]
	return sum, ok
}

func (v *verifier) check(name, sum string) error {
	if v == nil {
		return nil
	}
	want, ok := v.files[name]
	if !ok {
		return fmt.Errorf("%s is not signed (%s does not list it); %s", name, v.path, signFix)
	}
	if !strings.EqualFold(want, sum) {
		return fmt.Errorf("%s is not the file that was signed (SHA-256 %s, signed %s): changed after signing, or from another bundle; %s",
			name, sum[:12], want[:12], signFix)
	}
	return nil
}

// LoadSigned is Load for a bundle that must be signed by one of keys.
func LoadSigned(dir string, keys []ed25519.PublicKey) (*Bundle, error) {
	path := filepath.Join(dir, SignatureFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: the bundle is not signed, and GNLD_MODEL_PUBKEYS asks for signed bundles; %s", path, signFix)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, err := ParseSignature(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w; %s", path, err, signFix)
	}
	sig, _ := base64.StdEncoding.DecodeString(s.Signature)
	var key ed25519.PublicKey
	for _, k := range keys {
		if KeyID(k) == s.KeyID {
			key = k
		}
	}
	if key == nil {
		return nil, fmt.Errorf("%s: signed by key %s, which is not among the %d trusted keys of GNLD_MODEL_PUBKEYS; add its KEY.pub line there, or %s",
			path, s.KeyID, len(keys), signFix)
	}
	if !ed25519.Verify(key, manifest(s.Files), sig) {
		return nil, fmt.Errorf("%s: the signature does not match its list of files (the list was edited after signing); %s", path, signFix)
	}
	return load(dir, &verifier{path: path, files: s.Files})
}

func clipString(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
