"""A throwaway PKI for tests, made with the openssl command line.

Every key is generated at run time into a temporary directory; nothing
here is ever committed. Certificates mirror BEARSSL-FACTS.md: a CA with
basicConstraints CA:TRUE (a BearSSL trust anchor), server certificates
with or without a SAN, device certificates with clientAuth.
"""

import os
import subprocess


def _run(args, cwd):
    r = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError("openssl failed: %s\n%s" % (" ".join(args), r.stderr))
    return r.stdout


class Pki:
    """Files live in self.dir; names are returned as absolute paths."""

    def __init__(self, directory, name="ca", ec=False):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        # openssl ca wants a database and a serial file.
        self.db = os.path.join(directory, name + "-index.txt")
        open(self.db, "w").close()
        with open(os.path.join(directory, name + "-serial"), "w") as f:
            f.write("1000\n")
        with open(os.path.join(directory, name + "-crlnumber"), "w") as f:
            f.write("1000\n")
        self.name = name
        self.ca_key = self.path(name + ".key")
        self.ca_crt = self.path(name + ".crt")
        self._key(self.ca_key, ec)
        _run(["openssl", "req", "-x509", "-new", "-key", self.ca_key, "-out", self.ca_crt,
              "-days", "30", "-subj", "/CN=Test CA %s" % name,
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], directory)
        self._write_ca_conf()

    def path(self, f):
        return os.path.join(self.dir, f)

    def _key(self, path, ec):
        if ec:
            _run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-out", path], self.dir)
        else:
            _run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                  "-out", path], self.dir)
        os.chmod(path, 0o600)

    def _write_ca_conf(self):
        self.conf = self.path(self.name + "-ca.cnf")
        with open(self.conf, "w") as f:
            f.write("""[ca]
default_ca = ca_default
[ca_default]
dir = {dir}
database = {db}
serial = {dir}/{name}-serial
crlnumber = {dir}/{name}-crlnumber
new_certs_dir = {dir}
certificate = {crt}
private_key = {key}
default_md = sha256
default_days = 30
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
""".format(dir=self.dir, db=self.db, name=self.name, crt=self.ca_crt, key=self.ca_key))

    def issue(self, name, cn, san=None, client=False, ec=False, days=30,
              startdate=None, enddate=None):
        """Issue name.crt / name.key. san: e.g. "IP:127.0.0.1,DNS:raspberry"
        or None for a CN-only certificate. startdate/enddate in openssl ca
        form (YYYYMMDDHHMMSSZ) make not-yet-valid or expired certificates."""
        key = self.path(name + ".key")
        csr = self.path(name + ".csr")
        crt = self.path(name + ".crt")
        ext = self.path(name + ".ext")
        self._key(key, ec)
        _run(["openssl", "req", "-new", "-key", key, "-out", csr, "-subj", "/CN=%s" % cn], self.dir)
        with open(ext, "w") as f:
            f.write("[v3]\nbasicConstraints=critical,CA:FALSE\n")
            f.write("keyUsage=critical,digitalSignature,keyEncipherment\n")
            f.write("extendedKeyUsage=%s\n" % ("clientAuth" if client else "serverAuth"))
            if san:
                f.write("subjectAltName=%s\n" % san)
        args = ["openssl", "ca", "-batch", "-config", self.conf, "-in", csr, "-out", crt,
                "-extfile", ext, "-extensions", "v3", "-notext"]
        if startdate:
            args += ["-startdate", startdate]
        if enddate:
            args += ["-enddate", enddate]
        else:
            args += ["-days", str(days)]
        _run(args, self.dir)
        return crt, key

    def revoke(self, crt):
        _run(["openssl", "ca", "-batch", "-config", self.conf, "-revoke", crt], self.dir)

    def crl(self, name="crl"):
        out = self.path(name + ".pem")
        _run(["openssl", "ca", "-batch", "-config", self.conf, "-gencrl", "-out", out], self.dir)
        return out
