//! JSON Web Tokens, etcd's other kind of auth token (`--auth-token
//! jwt,pub-key=PATH,priv-key=PATH,sign-method=ES256[,ttl=5m]`).
//!
//! A JWT carries its user and the auth revision it was issued at (etcd's
//! claims: `username`, `revision`, `exp`), signed with a key every member
//! holds, so any member checks it without the log and it survives master
//! changes and restarts. It stops working at `exp`, or once the auth state
//! has changed since it was issued (`revision of auth store is old`, on which
//! etcd's clients authenticate again) — so a deleted user or a changed
//! password voids every token issued before.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// etcd's default lifetime of a JWT.
pub const JWT_TTL_DEFAULT: Duration = Duration::from_secs(300);
/// Largest key file read, in bytes.
const KEY_FILE_BYTES_MAX: u64 = 1 << 20;

/// What `--auth-token jwt,...` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtOptions {
    /// The public key (PEM) every member checks tokens with.
    pub public_key_file: PathBuf,
    /// The private key (PEM) tokens are signed with.
    pub private_key_file: PathBuf,
    /// The signing algorithm, by its JWS name (RS256, ES256, EdDSA, ...).
    pub sign_method: String,
    /// How long a token lives.
    pub ttl: Duration,
}

/// Why JWT could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The `--auth-token` text.
    #[error("--auth-token: {0}")]
    Flag(String),
    /// A key file.
    #[error("--auth-token key {path}: {why}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Parses etcd's `--auth-token`: `simple` (`None`) or `jwt,pub-key=...,priv-key=...,sign-method=...[,ttl=...]`.
pub fn parse_auth_token(text: &str) -> Result<Option<JwtOptions>, JwtError> {
    let flag = |why: String| JwtError::Flag(why);
    let mut parts = text.split(',');
    match parts.next().map(str::trim) {
        Some("simple") if parts.next().is_none() => return Ok(None),
        Some("simple") => return Err(flag("simple takes no options".into())),
        Some("jwt") => {}
        _ => {
            return Err(flag(format!(
                "{text:?}: expected simple or jwt,pub-key=...,priv-key=...,sign-method=..."
            )))
        }
    }
    let (mut public, mut private, mut method, mut ttl) = (None, None, None, JWT_TTL_DEFAULT);
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| flag(format!("{part:?}: expected KEY=VALUE")))?;
        match key.trim() {
            "pub-key" => public = Some(PathBuf::from(value)),
            "priv-key" => private = Some(PathBuf::from(value)),
            "sign-method" => method = Some(value.to_string()),
            "ttl" => {
                ttl =
                    parse_duration(value).ok_or_else(|| flag(format!("ttl {value:?}: expected e.g. 300s, 5m or 1h")))?
            }
            other => return Err(flag(format!("unknown jwt option {other:?}"))),
        }
    }
    Ok(Some(JwtOptions {
        public_key_file: public.ok_or_else(|| flag("jwt needs pub-key=PATH".into()))?,
        private_key_file: private.ok_or_else(|| flag("jwt needs priv-key=PATH".into()))?,
        sign_method: method.ok_or_else(|| flag("jwt needs sign-method=...".into()))?,
        ttl,
    }))
}

/// `300s`, `5m`, `1h`: a positive whole number and a unit, at most a day.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        _ => return None,
    };
    (1..=86_400).contains(&seconds).then(|| Duration::from_secs(seconds))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// The loaded keys.
pub struct JwtKeys {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("JwtKeys")
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

fn read_key(path: &Path) -> Result<Vec<u8>, JwtError> {
    let why = |why: String| JwtError::Key {
        path: path.display().to_string(),
        why,
    };
    let length = std::fs::metadata(path).map_err(|error| why(error.to_string()))?.len();
    if length > KEY_FILE_BYTES_MAX {
        return Err(why(format!("larger than {KEY_FILE_BYTES_MAX} bytes")));
    }
    std::fs::read(path).map_err(|error| why(error.to_string()))
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl JwtKeys {
    /// Reads and checks the keys: they must parse for the method and sign a
    /// token the public key accepts.
    pub fn load(options: &JwtOptions) -> Result<JwtKeys, JwtError> {
        let algorithm: Algorithm = options
            .sign_method
            .parse()
            .map_err(|_| JwtError::Flag(format!("unknown sign-method {:?}", options.sign_method)))?;
        let private = read_key(&options.private_key_file)?;
        let public = read_key(&options.public_key_file)?;
        let method = &options.sign_method;
        let key_error = |path: &Path| {
            let path = path.display().to_string();
            move |error: jsonwebtoken::errors::Error| JwtError::Key {
                path,
                why: format!("not a {method} key: {error}"),
            }
        };
        let (encoding, decoding) = match algorithm {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => (
                EncodingKey::from_rsa_pem(&private).map_err(key_error(&options.private_key_file))?,
                DecodingKey::from_rsa_pem(&public).map_err(key_error(&options.public_key_file))?,
            ),
            Algorithm::ES256 | Algorithm::ES384 => (
                EncodingKey::from_ec_pem(&private).map_err(key_error(&options.private_key_file))?,
                DecodingKey::from_ec_pem(&public).map_err(key_error(&options.public_key_file))?,
            ),
            Algorithm::EdDSA => (
                EncodingKey::from_ed_pem(&private).map_err(key_error(&options.private_key_file))?,
                DecodingKey::from_ed_pem(&public).map_err(key_error(&options.public_key_file))?,
            ),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err(JwtError::Flag(
                    "sign-method: HMAC needs a shared secret, not a key pair; use RS*, PS*, ES* or EdDSA".into(),
                ))
            }
        };
        let keys = JwtKeys {
            algorithm,
            encoding,
            decoding,
            ttl: options.ttl,
        };
        let probe = keys.sign("probe", 1).map_err(|why| JwtError::Key {
            path: options.private_key_file.display().to_string(),
            why,
        })?;
        if keys.verify(&probe).is_none() {
            return Err(JwtError::Key {
                path: options.public_key_file.display().to_string(),
                why: "does not match priv-key".into(),
            });
        }
        Ok(keys)
    }

    /// A token for `user` at auth revision `revision`.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: unix_seconds() + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.encoding).map_err(|error| error.to_string())
    }

    /// The user and auth revision of a token this group signed, if it is
    /// valid and not expired.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_keys(directory: &Path) -> JwtOptions {
        let pair = rcgen::KeyPair::generate().expect("key pair");
        let private_key_file = directory.join("jwt.key");
        let public_key_file = directory.join("jwt.pub");
        std::fs::write(&private_key_file, pair.serialize_pem()).unwrap();
        std::fs::write(&public_key_file, pair.public_key_pem()).unwrap();
        JwtOptions {
            public_key_file,
            private_key_file,
            sign_method: "ES256".into(),
            ttl: Duration::from_secs(60),
        }
    }

    fn temporary_directory(tag: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("synod-jwt-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        directory
    }

    #[test]
    fn the_flag_parses_as_etcd_writes_it() {
        assert_eq!(parse_auth_token("simple").unwrap(), None);
        let options = parse_auth_token("jwt,pub-key=a.pub,priv-key=a.key,sign-method=RS256,ttl=10m")
            .unwrap()
            .unwrap();
        assert_eq!(options.ttl, Duration::from_secs(600));
        assert_eq!(options.sign_method, "RS256");
        for bad in [
            "",
            "simple,ttl=1s",
            "jwt",
            "jwt,pub-key=a",
            "jwt,pub-key=a,priv-key=b,sign-method=ES256,ttl=0s",
            "jwt,pub-key=a,priv-key=b,sign-method=ES256,ttl=5d",
            "jwt,pub-key=a,priv-key=b,sign-method=ES256,colour=red",
            "paseto",
        ] {
            assert!(parse_auth_token(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_token_verifies_until_tampered_with() {
        let directory = temporary_directory("verify");
        let keys = JwtKeys::load(&write_keys(&directory)).expect("keys load");
        let token = keys.sign("alice", 7).unwrap();
        assert_eq!(keys.verify(&token), Some(("alice".to_string(), 7)));
        let mut tampered = token.clone().into_bytes();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        assert_eq!(keys.verify(&String::from_utf8(tampered).unwrap()), None);
        assert_eq!(keys.verify("not a token"), None);
        // Another group's keys do not accept it.
        let other = temporary_directory("other");
        let other_keys = JwtKeys::load(&write_keys(&other)).expect("keys load");
        assert_eq!(other_keys.verify(&token), None);
        std::fs::remove_dir_all(directory).ok();
        std::fs::remove_dir_all(other).ok();
    }

    #[test]
    fn mismatched_or_wrong_keys_are_refused_at_load() {
        let first = temporary_directory("first");
        let second = temporary_directory("second");
        let mut options = write_keys(&first);
        options.public_key_file = write_keys(&second).public_key_file;
        let error = JwtKeys::load(&options).expect_err("mismatched pair");
        assert!(error.to_string().contains("does not match"), "{error}");
        let mut options = write_keys(&first);
        options.sign_method = "RS256".into();
        assert!(JwtKeys::load(&options).is_err());
        options.sign_method = "HS256".into();
        assert!(JwtKeys::load(&options).is_err());
        std::fs::remove_dir_all(first).ok();
        std::fs::remove_dir_all(second).ok();
    }
}
