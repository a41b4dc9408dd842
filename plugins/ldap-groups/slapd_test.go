package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// slapd is a real OpenLDAP server run by a test, on 127.0.0.1, with its
// own configuration and data directory.
type slapd struct {
	dir      string
	ldapURL  string // ldap://127.0.0.1:port (StartTLS available)
	ldapsURL string // ldaps://127.0.0.1:port
	caFile   string // CA that signed the server certificate
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has exited
}

const (
	baseDN    = "dc=example,dc=com"
	adminDN   = "cn=admin,dc=example,dc=com"
	adminPW   = "adminsecret"
	serviceDN = "cn=tsidp,ou=services,dc=example,dc=com"
	servicePW = "servicesecret"
	slapdHelp = "install OpenLDAP with: apt-get install -y slapd ldap-utils"
	seedLDIF  = `dn: dc=example,dc=com
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=com
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=com
objectClass: organizationalUnit
ou: groups

dn: ou=other,dc=example,dc=com
objectClass: organizationalUnit
ou: other

dn: ou=services,dc=example,dc=com
objectClass: organizationalUnit
ou: services

dn: cn=tsidp,ou=services,dc=example,dc=com
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: tsidp
userPassword: servicesecret

dn: uid=alice,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Example
mail: alice@example.com

dn: uid=bob,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Example
mail: bob@example.com

dn: uid=eve,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: eve
cn: Eve
sn: Example
mail: eve@example.com

dn: uid=twin1,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: twin1
cn: Twin
sn: One
mail: twin@example.com

dn: uid=twin2,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: twin2
cn: Twin
sn: Two
mail: twin@example.com

dn: cn=eng,ou=groups,dc=example,dc=com
objectClass: groupOfNames
cn: eng
member: uid=alice,ou=people,dc=example,dc=com
member: uid=bob,ou=people,dc=example,dc=com

dn: cn=admins,ou=groups,dc=example,dc=com
objectClass: groupOfNames
cn: admins
member: uid=alice,ou=people,dc=example,dc=com

dn: cn=mailing-list,ou=other,dc=example,dc=com
objectClass: groupOfNames
cn: mailing-list
member: uid=alice,ou=people,dc=example,dc=com
`
)

// freePort returns a TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startSlapd starts and seeds a slapd for the test and stops it (by PID)
// at the end.
func startSlapd(t *testing.T) *slapd {
	t.Helper()
	for _, bin := range []string{"/usr/sbin/slapd", "ldapadd"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: %v; %s", bin, err, slapdHelp)
		}
	}
	s := &slapd{dir: t.TempDir()}
	s.caFile = writeCerts(t, s.dir)
	if err := os.Mkdir(filepath.Join(s.dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile %[1]s/slapd.pid
TLSCACertificateFile %[1]s/ca.pem
TLSCertificateFile %[1]s/server.pem
TLSCertificateKeyFile %[1]s/server.key
database mdb
maxsize 10485760
suffix "%[2]s"
rootdn "%[3]s"
rootpw %[4]s
directory %[1]s/data
overlay memberof
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="%[5]s" read by * none
`, s.dir, baseDN, adminDN, adminPW, serviceDN)
	confFile := filepath.Join(s.dir, "slapd.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		p1, p2 := freePort(t), freePort(t)
		s.ldapURL = fmt.Sprintf("ldap://127.0.0.1:%d", p1)
		s.ldapsURL = fmt.Sprintf("ldaps://127.0.0.1:%d", p2)
		if lastErr = s.start(t, confFile); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatal(lastErr)
	}
	seed := filepath.Join(s.dir, "seed.ldif")
	os.WriteFile(seed, []byte(seedLDIF), 0o600)
	if out, err := exec.Command("ldapadd", "-x", "-H", s.ldapURL, "-D", adminDN, "-w", adminPW, "-f", seed).CombinedOutput(); err != nil {
		t.Fatalf("ldapadd: %v\n%s", err, out)
	}
	return s
}

// start runs slapd in the foreground (-d) so that it stays our child.
func (s *slapd) start(t *testing.T, confFile string) error {
	log, err := os.Create(filepath.Join(s.dir, "slapd.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command("/usr/sbin/slapd", "-d", "0", "-f", confFile, "-h", s.ldapURL+"/ "+s.ldapsURL+"/")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("slapd: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	addr := strings.TrimPrefix(s.ldapURL, "ldap://")
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			out, _ := os.ReadFile(filepath.Join(s.dir, "slapd.log"))
			return fmt.Errorf("slapd exited at start:\n%s", out)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("slapd did not listen on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.cmd, s.exited = cmd, exited
	t.Cleanup(stop)
	return nil
}

// kill stops slapd abruptly, as a crashed directory would, and waits for
// it to be gone.
func (s *slapd) kill() {
	s.cmd.Process.Kill()
	<-s.exited
}

// writeCerts writes a CA and a server certificate for 127.0.0.1 and
// localhost into dir and returns the CA file.
func writeCerts(t *testing.T, dir string) string {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tsidp test LDAP CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	write("server.pem", "CERTIFICATE", der)
	write("server.key", "PRIVATE KEY", keyDER)
	return filepath.Join(dir, "ca.pem")
}
