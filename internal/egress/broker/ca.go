package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Files of the CA directory.
const (
	FileCAKey  = "ca-key.pem"
	FileCACert = "ca-cert.pem"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 7 * 24 * time.Hour
	// leafRenewBefore: a cached leaf closer than this to its end is
	// minted again, so no handshake ever gets a certificate about to lapse.
	leafRenewBefore = 24 * time.Hour
	// maxLeaves bounds the leaf cache; the broker table names a handful
	// of hosts, so the bound only matters if that table grows.
	maxLeaves = 256
	maxPEM    = 64 << 10
)

// CA is this banger instance's broker CA. The guest trusts it (the
// daemon hands its certificate to the seed), so its key never leaves
// the host and is kept 0600.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
	// leafKey signs every leaf: one key per process keeps minting cheap,
	// and the leaves live only in memory.
	leafKey *ecdsa.PrivateKey
	now     func() time.Time

	mu     sync.Mutex
	leaves map[string]*tls.Certificate
}

// LoadOrCreateCA loads the CA kept in dir, or creates it. dir is created
// 0700 when missing; a dir or file that is a symlink or is not owned by
// the daemon's user is refused, since whoever controls it controls what
// every guest trusts.
func LoadOrCreateCA(dir string) (*CA, error) {
	if err := ensurePrivateDir(dir); err != nil {
		return nil, err
	}
	keyPath, certPath := filepath.Join(dir, FileCAKey), filepath.Join(dir, FileCACert)
	keyPEM, kerr := readPrivateFile(keyPath)
	certPEM, cerr := readPrivateFile(certPath)
	var ca *CA
	switch {
	case kerr == nil && cerr == nil:
		c, err := parseCA(keyPEM, certPEM)
		if err != nil {
			return nil, fmt.Errorf("broker ca in %s: %w", dir, err)
		}
		ca = c
	case (kerr == nil || errors.Is(kerr, os.ErrNotExist)) && errors.Is(cerr, os.ErrNotExist):
		// Neither file, or the key alone: a crash between the two writes
		// of a new CA (the key goes first). No guest trusts a certificate
		// that was never written: start over.
		c, kp, cp, err := newCA()
		if err != nil {
			return nil, err
		}
		if err := writePrivateFile(keyPath, kp); err != nil {
			return nil, err
		}
		if err := writePrivateFile(certPath, cp); err != nil {
			return nil, err
		}
		ca = c
	case kerr != nil && !errors.Is(kerr, os.ErrNotExist):
		return nil, kerr
	case cerr != nil:
		return nil, cerr
	default:
		return nil, fmt.Errorf("broker ca in %s: %s exists without %s; remove it to make a new CA", dir, FileCACert, FileCAKey)
	}
	lk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("leaf key: %w", err)
	}
	ca.leafKey = lk
	ca.now = time.Now
	ca.leaves = map[string]*tls.Certificate{}
	return ca, nil
}

func newCA() (*CA, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ca key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "banger egress CA", Organization: []string{"banger"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ca certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ca key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	c, err := parseCA(keyPEM, certPEM)
	return c, keyPEM, certPEM, err
}

func parseCA(keyPEM, certPEM []byte) (*CA, error) {
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("key is not PEM")
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil {
		return nil, errors.New("certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("certificate does not match the key")
	}
	if !cert.IsCA {
		return nil, errors.New("certificate is not a CA")
	}
	return &CA{cert: cert, certPEM: pem.EncodeToMemory(cb), key: key}, nil
}

// CertPEM is the CA certificate the guest installs.
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.certPEM...) }

// Certificate is the parsed CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Leaf returns a certificate for name signed by the CA, minted on first
// use and cached while it has more than a day left.
func (ca *CA) Leaf(name string) (*tls.Certificate, error) {
	now := ca.now()
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if c, ok := ca.leaves[name]; ok && c.Leaf.NotAfter.Sub(now) > leafRenewBefore {
		return c, nil
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &ca.leafKey.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("leaf certificate for %s: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("leaf certificate for %s: %w", name, err)
	}
	c := &tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: ca.leafKey, Leaf: leaf}
	if len(ca.leaves) >= maxLeaves {
		// Drop the one closest to its end; the cache is tiny, a scan is fine.
		var oldest string
		for n, l := range ca.leaves {
			if oldest == "" || l.Leaf.NotAfter.Before(ca.leaves[oldest].Leaf.NotAfter) {
				oldest = n
			}
		}
		delete(ca.leaves, oldest)
	}
	ca.leaves[name] = c
	return c, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n.Add(n, big.NewInt(1))
}

// ensurePrivateDir creates dir 0700 or checks that it is a real
// directory owned by us, tightening its mode if needed.
func ensurePrivateDir(dir string) error {
	st, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create broker ca dir: %w", err)
		}
		st, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("broker ca dir: %w", err)
	}
	if st.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("broker ca dir %s is a symlink; refusing it", dir)
	}
	if !st.IsDir() {
		return fmt.Errorf("broker ca dir %s is not a directory", dir)
	}
	if err := checkOwner(dir, st); err != nil {
		return err
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("broker ca dir: %w", err)
		}
	}
	return nil
}

func checkOwner(p string, st os.FileInfo) error {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Getuid() {
		return fmt.Errorf("%s is owned by uid %d, not by us (uid %d); refusing it", p, sys.Uid, os.Getuid())
	}
	return nil
}

// readPrivateFile reads a small regular file that must not be a
// symlink and must be ours. Errors name the path, never the content.
func readPrivateFile(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symlink; refusing it", p)
		}
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	if err := checkOwner(p, st); err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			return nil, fmt.Errorf("tighten %s: %w", p, err)
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPEM+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if len(data) > maxPEM {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, maxPEM)
	}
	return data, nil
}

// writePrivateFile writes data to p with mode 0600 through a temporary
// file in the same directory, so a crash leaves the old file or the new.
func writePrivateFile(p string, data []byte) error {
	return writeFileAtomic(p, data, 0o600)
}

func writeFileAtomic(p string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(p)
	f, err := os.CreateTemp(dir, "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("replace %s: %w", p, err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the rename survives a crash only once the directory is synced
		d.Close()
	}
	return nil
}

func statMode(p string) (os.FileMode, error) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	return st.Mode().Perm(), nil
}
