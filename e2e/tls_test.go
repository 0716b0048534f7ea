package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// writeCert writes a self-signed certificate for 127.0.0.1 with the given
// serial number to dir/cert.pem and dir/key.pem, each atomically.
func writeCert(t *testing.T, dir string, serial int64) *x509.Certificate {
	t.Helper()
	c := testkit.SelfSigned(t, serial)
	c.WritePEM(t, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	return c.Leaf
}

// tlsClient trusts exactly the given certificates and speaks HTTP/2.
func tlsClient(certs ...*x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
	}}
}

// HTTPS with HTTP/2: a stream in flight at SIGHUP finishes on the old
// generation, and the new one serves the certificate found on disk then.
func TestTLSRotatesCertificateOnUpgrade(t *testing.T) {
	dir := testkit.ShortTempDir(t)
	cert1 := writeCert(t, dir, 1)
	s := start(t, startOptions{dir: dir, args: []string{"-tls-cert", "cert.pem", "-tls-key", "key.pem"}})
	base := "https://" + s.addr

	c := tlsClient(cert1)
	resp, err := c.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 1 {
		t.Fatalf("GET / over TLS: %s with certificate serial %v, want HTTP/2 and serial 1",
			resp.Proto, resp.TLS.PeerCertificates[0].SerialNumber)
	}

	// A stream in flight on the existing HTTP/2 connection at SIGHUP.
	req, _ := http.NewRequest("GET", base+"/slow?ms=1500", nil)
	slow := sendWhenWritten(t, c, req)
	cert2 := writeCert(t, dir, 2)
	pid := s.waitReady(1)
	s.signal(pid, syscall.SIGHUP)
	s.waitReady(2)
	if r := <-slow; r.err != nil || r.status != http.StatusOK || r.gen != "1" {
		t.Errorf("HTTP/2 /slow across the upgrade: status %d from generation %s, error %v; want 200 from 1", r.status, r.gen, r.err)
	}

	resp, err = tlsClient(cert2).Get(base + "/")
	if err != nil {
		t.Fatalf("GET / after rotation, trusting only the new certificate: %v", err)
	}
	resp.Body.Close()
	if got := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); got != 2 || resp.Header.Get("X-Generation") != "2" {
		t.Errorf("after rotation: certificate serial %d from generation %s, want 2 from 2", got, resp.Header.Get("X-Generation"))
	}

	// A broken certificate fails the upgrade, not the service.
	os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("not a certificate"), 0o600)
	pid2 := s.waitReady(2)
	s.signal(pid2, syscall.SIGHUP)
	failed := s.logs.Wait(t, time.Minute, "upgrade failed", func(l testkit.LogLine) bool {
		return l.Msg() == "upgrade failed: old generation keeps serving" && l.Int("generation") == 2
	})
	if failed.Str("exit_status") != "exit status 2" {
		t.Errorf("upgrade with a broken certificate: exit_status %q, want exit status 2", failed.Str("exit_status"))
	}
	tc := tlsClient(cert2)
	resp, err = tc.Get(base + "/")
	if err != nil || resp.Header.Get("X-Generation") != "2" {
		t.Fatalf("after a failed upgrade: %v; want generation 2 still serving", err)
	}
	resp.Body.Close()
}
