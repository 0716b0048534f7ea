package restarttest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"syscall"
)

// parseTarget checks that raw is an http or https URL on a loopback host
// with a port, and returns it with its dial address and port.
func parseTarget(raw string) (u *url.URL, hostport string, port int, err error) {
	u, err = url.Parse(raw)
	if err != nil {
		return nil, "", 0, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, "", 0, fmt.Errorf("scheme %q: want http or https", u.Scheme)
	}
	host := u.Hostname()
	if host == "" {
		return nil, "", 0, errors.New("no host: want http://127.0.0.1:PORT/")
	}
	if p := u.Port(); p == "" {
		return nil, "", 0, errors.New("no port: name it, as in http://127.0.0.1:8080/")
	} else if port, err = strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
		return nil, "", 0, fmt.Errorf("port %q: want 1 to 65535", p)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return nil, "", 0, fmt.Errorf("host %q is not a loopback address: the kit sends traffic only to 127.0.0.0/8, ::1 or localhost", u.Hostname())
	}
	if u.Path == "" {
		u.Path = "/"
	}
	return u, net.JoinHostPort(ip.String(), strconv.Itoa(port)), port, nil
}

// loopbackDialer refuses, at the socket, any address that is not loopback:
// whatever a client library resolves, traffic stays on this machine.
var loopbackDialer = &net.Dialer{
	Control: func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil || !ap.Addr().Unmap().IsLoopback() {
			return fmt.Errorf("refusing to connect to %s: not a loopback address", address)
		}
		return nil
	},
}

func dialLoopback(ctx context.Context, addr string) (net.Conn, error) {
	return loopbackDialer.DialContext(ctx, "tcp", addr)
}

// tlsConfig is the client TLS configuration for the target.
func (s *settings) tlsConfig(nextProtos ...string) (*tls.Config, error) {
	c := &tls.Config{ServerName: s.target.Hostname(), InsecureSkipVerify: s.Insecure, NextProtos: nextProtos}
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", s.CAFile)
		}
		c.RootCAs = pool
	}
	return c, nil
}
