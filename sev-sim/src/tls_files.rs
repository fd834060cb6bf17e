//! TLS material for tests of the broker's TCP admin listener, made afresh on
//! every call so that no key is ever checked in: a CA, a server certificate it
//! issued for `localhost` and 127.0.0.1 with its key, and a second CA that
//! issued nothing (what a client that trusts the wrong CA holds).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The PEM files [`TlsFiles::write`] made.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that issued `cert`.
    pub ca: PathBuf,
    /// A CA that issued nothing.
    pub other_ca: PathBuf,
    /// The server certificate, for `localhost` and 127.0.0.1.
    pub cert: PathBuf,
    /// Its private key, mode 0600.
    pub key: PathBuf,
}

fn tls_error(e: rcgen::Error) -> std::io::Error {
    std::io::Error::other(format!("making test certificates: {e}"))
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate()?)
}

impl TlsFiles {
    /// Makes the CAs, the certificate and the key and writes them as
    /// `ca.pem`, `other-ca.pem`, `admin-cert.pem` and `admin-key.pem` in `dir`.
    pub fn write(dir: &Path) -> std::io::Result<TlsFiles> {
        let issuer = ca("admin listener test CA").map_err(tls_error)?;
        let other = ca("admin listener test CA that signed nothing").map_err(tls_error)?;
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(tls_error)?;
        p.distinguished_name.push(DnType::CommonName, "kbs admin");
        let key = KeyPair::generate().map_err(tls_error)?;
        let cert = p.signed_by(&key, &issuer).map_err(tls_error)?;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            cert: dir.join("admin-cert.pem"),
            key: dir.join("admin-key.pem"),
        };
        std::fs::write(&files.ca, issuer.pem())?;
        std::fs::write(&files.other_ca, other.pem())?;
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))?;
        Ok(files)
    }
}
