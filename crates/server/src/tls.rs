//! TLS on the client port, with etcd's flags: `--cert-file`, `--key-file`,
//! `--trusted-ca-file` and `--client-cert-auth`.
//!
//! Certificates and keys are read once, at start-up, into a rustls server
//! configuration (the `ring` provider; no OpenSSL). With `--client-cert-auth`
//! a client must present a certificate that chains to the trusted CA; with
//! only `--trusted-ca-file`, a certificate a client presents is verified but
//! none is required. Either way the common name of a verified client
//! certificate is handed to the API as a [`ClientCertificate`], as etcd does,
//! so that authentication can take it as the user's name.
//!
//! Followers forward requests to the master's client port, so each member is
//! also a client of the others: it trusts the trusted CA if one is given, and
//! otherwise the certificates of its own chain (what a self-signed
//! certificate, or a chain file ending in its CA, needs), and presents its
//! own certificate when the master may ask for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// Most bytes of one certificate or key file read; real ones are a few KiB.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// The client-port TLS flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--cert-file`: the member's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// `--key-file`: the private key of the leaf certificate (PEM).
    pub key_file: PathBuf,
    /// `--trusted-ca-file`: the CA client certificates (and other members'
    /// certificates, when forwarding) must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: refuse a client without a certificate chaining
    /// to the trusted CA.
    pub client_cert_auth: bool,
    /// The member's peer credentials, when members authenticate each other
    /// (`--peer-client-cert-auth`) and clients by certificate: a follower
    /// then forwards with its peer certificate, and a connection whose
    /// certificate chains to the peer CA and names a member is taken as that
    /// member's (so it may say which user a forwarded call runs as).
    pub members: Option<PeerTlsFiles>,
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {purpose} {path}: {reason}")]
    Read {
        /// Which flag named the file.
        purpose: &'static str,
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{purpose} {path} holds no {what}")]
    Empty {
        /// Which flag named the file.
        purpose: &'static str,
        /// The file.
        path: String,
        /// What was looked for.
        what: &'static str,
    },
    /// `--client-cert-auth` without `--trusted-ca-file`.
    #[error("--client-cert-auth needs --trusted-ca-file: client certificates must chain to a CA")]
    ClientAuthWithoutCa,
    /// rustls refused the certificates or the key.
    #[error("the TLS configuration is invalid: {0}")]
    Invalid(String),
}

/// The client port's TLS settings as they are now, starting with `initial`
/// and read again from `files` on every SIGHUP, as etcd reloads its
/// certificates: new connections use the new certificate, key and CA, open
/// ones keep theirs. Files that fail to load are logged and the settings in
/// force stay. (Forwarding to the master keeps the files read at start.)
pub fn reload_on_hangup(
    initial: ServerTls,
    files: TlsFiles,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::sync::watch::Receiver<ServerTls> {
    let (sender, receiver) = tokio::sync::watch::channel(initial);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP: certificates will not be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                hangup = hangups.recv() => if hangup.is_none() { return },
                () = shutdown.cancelled() => return,
            }
            match ClientTls::load(&files) {
                Ok(loaded) => {
                    tracing::info!("SIGHUP: client TLS certificates reloaded");
                    sender.send_replace(loaded.server_tls());
                }
                Err(error) => tracing::warn!(%error, "SIGHUP: client TLS certificates not reloaded; the old ones stay"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (files, shutdown, &sender);
    receiver
}

/// The common name of a verified client certificate, put in each request's
/// extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The common name again if the certificate also chains to the peer CA:
    /// the connection may be another member's (the API checks the name).
    pub member_name: Option<String>,
}

fn read_pem(purpose: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let error = |reason: String| TlsError::Read {
        purpose,
        path: path.display().to_string(),
        reason,
    };
    let length = std::fs::metadata(path).map_err(|e| error(e.to_string()))?.len();
    if length > PEM_FILE_BYTES_MAX {
        return Err(error(format!("it is larger than {PEM_FILE_BYTES_MAX} bytes")));
    }
    std::fs::read(path).map_err(|e| error(e.to_string()))
}

fn certificates(purpose: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(purpose, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Read {
            purpose,
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            purpose,
            path: path.display().to_string(),
            what: "PEM certificate",
        });
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem("--key-file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Empty {
        purpose: "--key-file",
        path: path.display().to_string(),
        what: "PEM private key",
    })
}

fn roots(certificates: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate.clone())
            .map_err(|error| TlsError::Invalid(error.to_string()))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Everything the client port and forwarding need, read from the files once.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// What the client port accepts with.
    pub server: Arc<rustls::ServerConfig>,
    /// The PEM bytes forwarding trusts (the trusted CA or the own chain).
    pub forward_ca_pem: Vec<u8>,
    /// The own certificate chain and key (PEM), presented when forwarding.
    pub identity_pem: (Vec<u8>, Vec<u8>),
    /// Whether every client must present a certificate (`--client-cert-auth`),
    /// whose common name then names the user of a call without a token.
    pub client_cert_auth: bool,
    /// Verifies a certificate against the peer CA only: whether a connection
    /// is another member's (see [`TlsFiles::members`]).
    pub member_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// What the client port accepts connections with now (a SIGHUP may change it).
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The rustls settings.
    pub config: Arc<rustls::ServerConfig>,
    /// See [`ClientTls::member_verifier`].
    pub member_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

impl ClientTls {
    /// The parts the accept loop needs.
    pub fn server_tls(&self) -> ServerTls {
        ServerTls {
            config: self.server.clone(),
            member_verifier: self.member_verifier.clone(),
        }
    }

    /// Reads and checks the files the flags name.
    pub fn load(files: &TlsFiles) -> Result<ClientTls, TlsError> {
        if files.client_cert_auth && files.trusted_ca_file.is_none() {
            return Err(TlsError::ClientAuthWithoutCa);
        }
        let chain = certificates("--cert-file", &files.cert_file)?;
        let key = private_key(&files.key_file)?;
        let trusted = match &files.trusted_ca_file {
            Some(path) => Some((
                certificates("--trusted-ca-file", path)?,
                read_pem("--trusted-ca-file", path)?,
            )),
            None => None,
        };
        // Members forwarding to this one present their peer certificates.
        let members = match &files.members {
            Some(members) if files.client_cert_auth => {
                let ca = certificates("--peer-trusted-ca-file", &members.trusted_ca_file)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca)?, provider())
                    .build()
                    .map_err(|error| TlsError::Invalid(error.to_string()))?;
                Some((members, ca, verifier))
            }
            _ => None,
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Invalid(error.to_string()))?;
        let builder = match &trusted {
            Some((ca, _)) => {
                let mut accepted = ca.clone();
                if let Some((_, peer_ca, _)) = &members {
                    accepted.extend(peer_ca.iter().cloned());
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots(&accepted)?, provider());
                let verifier = if files.client_cert_auth {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder
                    .with_client_cert_verifier(verifier.build().map_err(|error| TlsError::Invalid(error.to_string()))?)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = builder
            .with_single_cert(chain, key)
            .map_err(|error| TlsError::Invalid(error.to_string()))?;
        // etcdctl and every gRPC client negotiate HTTP/2; curl may ask for either.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let (cert_pem, key_pem) = match &members {
            Some((members, _, _)) => (
                read_pem("--peer-cert-file", &members.cert_file)?,
                read_pem("--peer-key-file", &members.key_file)?,
            ),
            None => (
                read_pem("--cert-file", &files.cert_file)?,
                read_pem("--key-file", &files.key_file)?,
            ),
        };
        let forward_ca_pem = match trusted {
            Some((_, pem)) => pem,
            None => read_pem("--cert-file", &files.cert_file)?,
        };
        Ok(ClientTls {
            server: Arc::new(server),
            forward_ca_pem,
            identity_pem: (cert_pem, key_pem),
            client_cert_auth: files.client_cert_auth,
            member_verifier: members.map(|(_, _, verifier)| verifier),
        })
    }

    /// The TLS settings of the JSON gateway's channel to this member's own
    /// port: the CA only, no certificate, so a gateway call never runs as the
    /// member's certificate names (etcd's gateway ignores certificate names
    /// too). Under `--client-cert-auth` the port then refuses the gateway.
    pub fn gateway(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.forward_ca_pem))
    }

    /// The TLS settings of a channel that forwards to another member.
    pub fn forwarding(&self) -> tonic::transport::ClientTlsConfig {
        let (cert, key) = &self.identity_pem;
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.forward_ca_pem))
            .identity(tonic::transport::Identity::from_pem(cert, key))
    }
}

/// etcd's peer TLS flags: `--peer-cert-file`, `--peer-key-file`,
/// `--peer-trusted-ca-file`, `--peer-client-cert-auth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This member's certificate chain (PEM), presented both when it accepts
    /// and when it dials; its common name must be the member's name.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA every member's certificate chains to (PEM).
    pub trusted_ca_file: PathBuf,
    /// Whether a dialing peer must present a certificate (and so prove which
    /// member it is). Without it, peer traffic is encrypted and the peer
    /// dialed is authenticated, but not the peer dialing.
    pub client_cert_auth: bool,
}

/// TLS between members: what accepts a peer and what dials one.
#[derive(Clone)]
pub struct PeerTls {
    /// Accepts peers; asks for (and with `client_cert_auth` requires) a
    /// certificate chaining to the CA.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Dials peers: trusts the CA, presents this member's certificate.
    pub connector: tokio_rustls::TlsConnector,
    /// `--peer-client-cert-auth`.
    pub client_cert_auth: bool,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PeerTls")
            .field("client_cert_auth", &self.client_cert_auth)
            .finish()
    }
}

impl PeerTls {
    /// Reads and checks the files the peer flags name.
    pub fn load(files: &PeerTlsFiles) -> Result<PeerTls, TlsError> {
        let chain = certificates("--peer-cert-file", &files.cert_file)?;
        let key = private_key(&files.key_file)?;
        let ca = certificates("--peer-trusted-ca-file", &files.trusted_ca_file)?;
        let roots = roots(&ca)?;
        let invalid = |error: rustls::Error| TlsError::Invalid(error.to_string());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        let verifier = if files.client_cert_auth {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        let verifier = verifier.build().map_err(|error| TlsError::Invalid(error.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(invalid)?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(invalid)?;
        Ok(PeerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            client_cert_auth: files.client_cert_auth,
        })
    }
}

/// The common name of the leaf certificate the other side of a TLS
/// connection presented, if it presented one with a common name.
pub fn peer_common_name(connection: &rustls::CommonState) -> Option<String> {
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(common_name)
}

/// The common name in a DER certificate's subject, if it has one.
pub fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

/// Throwaway certificates for `synod dev --tls`.
pub mod generate {
    use std::path::Path;

    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

    /// File names written into the directory given to [`write`].
    pub const CA_FILE: &str = "ca.pem";
    /// The members' certificate (one for all, naming localhost and 127.0.0.1).
    pub const SERVER_CERT_FILE: &str = "server.pem";
    /// Its key.
    pub const SERVER_KEY_FILE: &str = "server-key.pem";
    /// A client certificate whose common name is `root`.
    pub const CLIENT_CERT_FILE: &str = "client.pem";
    /// Its key.
    pub const CLIENT_KEY_FILE: &str = "client-key.pem";

    fn write_file(directory: &Path, name: &str, contents: &str) -> Result<(), String> {
        let path = directory.join(name);
        std::fs::write(&path, contents).map_err(|error| format!("cannot write {}: {error}", path.display()))
    }

    /// The peer certificate of member `name` (its common name is `name`).
    pub fn peer_cert_file(name: &str) -> String {
        format!("peer-{name}.pem")
    }

    /// Its key.
    pub fn peer_key_file(name: &str) -> String {
        format!("peer-{name}-key.pem")
    }

    /// Writes a new CA, a server certificate for `localhost` and
    /// `127.0.0.1`, and a client certificate for `client_name`, all signed by
    /// that CA, into `directory`.
    pub fn write(directory: &Path, client_name: &str) -> Result<(), String> {
        write_with_peers(directory, client_name, &[])
    }

    /// [`write`], and a peer certificate for each member of `peer_names`
    /// ([`peer_cert_file`], [`peer_key_file`]), for localhost and 127.0.0.1.
    pub fn write_with_peers(directory: &Path, client_name: &str, peer_names: &[String]) -> Result<(), String> {
        let failed = |error: rcgen::Error| format!("cannot generate certificates: {error}");
        std::fs::create_dir_all(directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
        let ca_key = KeyPair::generate().map_err(failed)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca_params.distinguished_name.push(DnType::CommonName, "synod dev CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(failed)?;
        let leaf = |names: Vec<String>, common_name: &str| -> Result<(String, String), String> {
            let key = KeyPair::generate().map_err(failed)?;
            let mut params = CertificateParams::new(names).map_err(failed)?;
            params.distinguished_name.push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            let certificate = params.signed_by(&key, &issuer).map_err(failed)?;
            Ok((certificate.pem(), key.serialize_pem()))
        };
        let (server, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "synod")?;
        let (client, client_key) = leaf(Vec::new(), client_name)?;
        write_file(directory, CA_FILE, &issuer.pem())?;
        write_file(directory, SERVER_CERT_FILE, &server)?;
        write_file(directory, SERVER_KEY_FILE, &server_key)?;
        write_file(directory, CLIENT_CERT_FILE, &client)?;
        write_file(directory, CLIENT_KEY_FILE, &client_key)?;
        for name in peer_names {
            let (peer, peer_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()], name)?;
            write_file(directory, &peer_cert_file(name), &peer)?;
            write_file(directory, &peer_key_file(name), &peer_key)?;
        }
        Ok(())
    }
}
