package testkit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"testing"
	"time"
)

// Cert is a self-signed TLS server certificate for 127.0.0.1, valid from
// an hour ago to an hour from now, and its key.
type Cert struct {
	Leaf *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// SelfSigned makes a new Cert with serial number serial (so that a test
// can tell two certificates apart).
func SelfSigned(t testing.TB, serial int64) *Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "handoff test"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &Cert{Leaf: leaf, Key: key}
}

// TLS is the certificate for a server's tls.Config.
func (c *Cert) TLS() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{c.Leaf.Raw}, PrivateKey: c.Key, Leaf: c.Leaf}
}

// ClientConfig is a client's TLS config that trusts this certificate only.
func (c *Cert) ClientConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(c.Leaf)
	return &tls.Config{RootCAs: pool}
}

// WritePEM writes the certificate to certFile and the key to keyFile, in
// PEM, each atomically (written beside, then renamed over), so that a
// server that reads them at any moment sees a whole file.
func (c *Cert) WritePEM(t testing.TB, certFile, keyFile string) {
	t.Helper()
	kder, err := x509.MarshalECPrivateKey(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path string
		b    *pem.Block
	}{
		{certFile, &pem.Block{Type: "CERTIFICATE", Bytes: c.Leaf.Raw}},
		{keyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}},
	} {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(f.b), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			t.Fatal(err)
		}
	}
}
