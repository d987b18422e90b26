//! The member's identity file in its data directory.
//!
//! Written once, on the first start, before anything else goes into the data
//! directory; its presence is what "this directory holds a member" means. A
//! restarted member takes its name, IDs and peers from here, never from flags,
//! so a changed `--initial-cluster` cannot silently move it to another cluster.
//!
//! Kept as two copies, `member` and `member.copy`, each ending in a CRC32C of
//! what precedes it, the way the acceptor metadata is kept: one bit flip or
//! truncation in either copy is detected, the member starts from the other and
//! rewrites the damaged one. Only when both copies are damaged does the member
//! refuse to start, naming both files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{cluster_id_with_token, parse_initial_cluster, ConfigError, MemberSpec};

/// The identity file's name in the data directory.
pub const IDENTITY_FILE: &str = "member";
/// The name of the identity file's second copy in the data directory.
pub const IDENTITY_COPY_FILE: &str = "member.copy";
/// The first line of a file written before copies and checksums (read, never written).
const HEADER_V1: &str = "synod-member-v1";
/// The first line of a checksummed copy.
const HEADER: &str = "synod-member-v2";
/// The key of the optional line holding `--initial-cluster-token`.
const TOKEN_KEY: &str = "initial_cluster_token";
/// The longest `--initial-cluster-token` accepted, in bytes.
pub const TOKEN_BYTES_MAX: usize = 255;
/// The last line's key: the CRC32C of every byte before that line, in hex.
const CHECKSUM_KEY: &str = "crc32c=";

/// Who this member is and which group it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// This member's name.
    pub name: String,
    /// This member's ID.
    pub member_id: u64,
    /// The cluster's ID: a request or peer for another cluster is refused.
    pub cluster_id: u64,
    /// The initial cluster string the IDs were derived from.
    pub initial_cluster: String,
    /// The cluster token mixed into the cluster ID (empty for none).
    pub token: String,
    /// Every member, this one included.
    pub members: Vec<MemberSpec>,
}

/// Why the identity file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file could not be read or written.
    #[error("cannot use data directory {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {path} holds a damaged member file: {reason}")]
    /// The file is damaged or not a member file.
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The flags describe no valid member.
    #[error("{0}")]
    Config(#[from] ConfigError),
}

impl Identity {
    /// A new member's identity from its flags.
    pub fn from_flags(name: &str, initial_cluster: &str) -> Result<Identity, ConfigError> {
        Identity::from_flags_with_token(name, initial_cluster, "")
    }

    /// A new member's identity from its flags, `--initial-cluster-token` included.
    pub fn from_flags_with_token(name: &str, initial_cluster: &str, token: &str) -> Result<Identity, ConfigError> {
        if token.len() > TOKEN_BYTES_MAX || token.chars().any(char::is_control) {
            return Err(ConfigError::BadToken { max: TOKEN_BYTES_MAX });
        }
        let members = parse_initial_cluster(initial_cluster)?;
        let Some(me) = members.iter().find(|member| member.name == name) else {
            return Err(ConfigError::NameNotListed {
                name: name.to_string(),
                cluster: initial_cluster.to_string(),
            });
        };
        Ok(Identity {
            name: name.to_string(),
            member_id: me.id,
            cluster_id: cluster_id_with_token(&members, token),
            initial_cluster: initial_cluster.to_string(),
            token: token.to_string(),
            members,
        })
    }

    /// This member's entry in `members`.
    pub fn me(&self) -> &MemberSpec {
        self.members
            .iter()
            .find(|member| member.id == self.member_id)
            .expect("an identity always lists its own member")
    }

    /// Reads the identity in `data_dir`, or `None` if the directory holds no member.
    ///
    /// A damaged or missing copy beside a good one is rewritten from the good
    /// one (a warning says which), so one damaged file never keeps the member down.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let primary = data_dir.join(IDENTITY_FILE);
        let copy = data_dir.join(IDENTITY_COPY_FILE);
        let from_primary = read_copy(&primary)?;
        let from_copy = read_copy(&copy)?;
        let (identity, damaged) = match (from_primary, from_copy) {
            (None, None) => return Ok(None),
            (Some(Ok(identity)), Some(Ok(other))) => {
                if identity != other {
                    return Err(IdentityError::Malformed {
                        path: copy,
                        reason: format!("both copies are intact but differ; {} is not this member's copy", IDENTITY_COPY_FILE),
                    });
                }
                return Ok(Some(identity));
            }
            (Some(Ok(identity)), None) => (identity, None),
            (Some(Ok(identity)), Some(Err(error))) | (Some(Err(error)), Some(Ok(identity))) => (identity, Some(error)),
            (None, Some(Ok(identity))) => (identity, None),
            (Some(Err(error)), None) | (None, Some(Err(error))) => return Err(error),
            (Some(Err(error)), Some(Err(other))) => {
                return Err(IdentityError::Malformed {
                    path: data_dir.to_path_buf(),
                    reason: format!("both copies of the member file are damaged ({error}; {other}); restore the data directory from a backup, or remove it and add the member anew"),
                })
            }
        };
        match damaged {
            Some(error) => tracing::warn!(%error, "member file repaired from its other copy"),
            None => {
                tracing::warn!(dir = %data_dir.display(), "member file copy missing or in the old format; rewriting both copies")
            }
        }
        identity.store(data_dir)?;
        Ok(Some(identity))
    }

    /// Writes both copies durably (each: temporary file, fsync, rename), then
    /// fsyncs the directory. A crash between the two renames leaves one good
    /// copy and one old or missing one, which [`Identity::load`] repairs.
    pub fn store(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: data_dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(data_dir).map_err(io)?;
        let mut body = format!(
            "{HEADER}\nname={}\nmember_id={:x}\ncluster_id={:x}\ninitial_cluster={}\n",
            self.name, self.member_id, self.cluster_id, self.initial_cluster
        );
        if !self.token.is_empty() {
            body.push_str(&format!("{TOKEN_KEY}={}\n", self.token));
        }
        let text = format!("{body}{CHECKSUM_KEY}{:08x}\n", crc32c::crc32c(body.as_bytes()));
        for name in [IDENTITY_FILE, IDENTITY_COPY_FILE] {
            let temporary = data_dir.join(format!("{name}.tmp"));
            let mut file = fs::File::create(&temporary).map_err(io)?;
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            fs::rename(&temporary, data_dir.join(name)).map_err(io)?;
        }
        fs::File::open(data_dir)
            .and_then(|directory| directory.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

/// One copy of the identity: `None` if the file does not exist, `Some(Err)` if
/// it is damaged. A file in the old, unchecksummed format parses here too;
/// [`Identity::load`] then rewrites it in the new one.
fn read_copy(path: &Path) -> Result<Option<Result<Identity, IdentityError>>, IdentityError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IdentityError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    Ok(Some(parse_copy(&bytes).map_err(|reason| IdentityError::Malformed {
        path: path.to_path_buf(),
        reason,
    })))
}

fn parse_copy(bytes: &[u8]) -> Result<Identity, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let body = if text.starts_with(HEADER_V1) {
        text
    } else if text.starts_with(HEADER) {
        if !text.ends_with('\n') {
            return Err("ends early".to_string());
        }
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|at| at + 1)
            .ok_or("ends early")?;
        let (body, last) = text.split_at(body_end);
        let recorded = last
            .strip_prefix(CHECKSUM_KEY)
            .and_then(|hex| u32::from_str_radix(hex.trim_end_matches('\n'), 16).ok())
            .ok_or("no checksum line")?;
        if recorded != crc32c::crc32c(body.as_bytes()) {
            return Err("checksum mismatch".to_string());
        }
        body
    } else {
        return Err("unknown header".to_string());
    };
    let mut lines = body.lines().skip(1);
    let mut field = |key: &str| -> Result<String, String> {
        let line = lines.next().ok_or("ends early")?;
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_string)
            .ok_or_else(|| format!("expected {key}="))
    };
    let name = field("name")?;
    let member_id = u64::from_str_radix(&field("member_id")?, 16).map_err(|_| "bad member_id")?;
    let cluster_id = u64::from_str_radix(&field("cluster_id")?, 16).map_err(|_| "bad cluster_id")?;
    let initial_cluster = field("initial_cluster")?;
    // The token line is there only when a token was given.
    let token = match lines.next() {
        None => String::new(),
        Some(line) => line
            .strip_prefix(TOKEN_KEY)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_string)
            .ok_or_else(|| format!("expected {TOKEN_KEY}= or the end"))?,
    };
    if lines.next().is_some() {
        return Err("unexpected lines after the last field".to_string());
    }
    let identity =
        Identity::from_flags_with_token(&name, &initial_cluster, &token).map_err(|error| error.to_string())?;
    if identity.member_id != member_id || identity.cluster_id != cluster_id {
        return Err("IDs do not match the recorded initial cluster".to_string());
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("synod-identity-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&directory);
        directory
    }

    #[test]
    fn a_cluster_token_changes_the_cluster_id_and_is_kept_in_the_member_file() {
        let cluster = "a=127.0.0.1:1,b=127.0.0.1:2";
        let plain = Identity::from_flags("a", cluster).unwrap();
        let tokened = Identity::from_flags_with_token("a", cluster, "restored-1").unwrap();
        assert_eq!(plain.member_id, tokened.member_id);
        assert_ne!(plain.cluster_id, tokened.cluster_id);
        assert_eq!(Identity::from_flags_with_token("a", cluster, "").unwrap(), plain);
        assert!(Identity::from_flags_with_token("a", cluster, "bad\ntoken").is_err());
        assert!(Identity::from_flags_with_token("a", cluster, &"x".repeat(TOKEN_BYTES_MAX + 1)).is_err());
        let directory = scratch("token");
        tokened.store(&directory).unwrap();
        assert_eq!(Identity::load(&directory).unwrap(), Some(tokened.clone()));
        // A file without the token line (written before tokens) reads as no token.
        plain.store(&directory).unwrap();
        assert_eq!(Identity::load(&directory).unwrap(), Some(plain));
        fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn identity_round_trips_and_damage_to_both_copies_is_reported() {
        let directory = scratch("both");
        assert_eq!(Identity::load(&directory).unwrap(), None);
        let identity = Identity::from_flags("b", "a=127.0.0.1:1,b=127.0.0.1:2").unwrap();
        identity.store(&directory).unwrap();
        assert_eq!(Identity::load(&directory).unwrap(), Some(identity));
        fs::write(directory.join(IDENTITY_FILE), b"garbage").unwrap();
        fs::write(directory.join(IDENTITY_COPY_FILE), b"garbage").unwrap();
        let error = Identity::load(&directory).unwrap_err();
        assert!(error.to_string().contains("both copies"), "{error}");
        let _ = fs::remove_dir_all(&directory);
    }

    /// Every single-bit flip (one per byte, the bit rotating) and every
    /// truncation of either copy is detected and repaired from the other.
    #[test]
    fn one_damaged_copy_is_repaired_from_the_other() {
        let directory = scratch("repair");
        let identity = Identity::from_flags("b", "a=127.0.0.1:1,b=127.0.0.1:2,c=127.0.0.1:3").unwrap();
        identity.store(&directory).unwrap();
        let good = fs::read(directory.join(IDENTITY_FILE)).unwrap();
        assert_eq!(good, fs::read(directory.join(IDENTITY_COPY_FILE)).unwrap());
        let mut damaged_copies = Vec::new();
        for at in 0..good.len() {
            let mut flipped = good.clone();
            flipped[at] ^= 1 << (at % 8);
            damaged_copies.push(flipped);
        }
        for length in 0..good.len() {
            damaged_copies.push(good[..length].to_vec());
        }
        for (index, damaged) in damaged_copies.iter().enumerate() {
            let name = [IDENTITY_FILE, IDENTITY_COPY_FILE][index % 2];
            fs::write(directory.join(name), damaged).unwrap();
            assert!(parse_copy(damaged).is_err(), "damage {index} went unseen");
            assert_eq!(
                Identity::load(&directory).unwrap().as_ref(),
                Some(&identity),
                "damage {index}"
            );
            assert_eq!(
                fs::read(directory.join(name)).unwrap(),
                good,
                "damage {index} not repaired"
            );
        }
        let _ = fs::remove_dir_all(&directory);
    }

    #[test]
    fn a_lost_copy_and_an_old_format_file_are_rewritten() {
        let directory = scratch("old");
        let identity = Identity::from_flags("a", "a=127.0.0.1:1,b=127.0.0.1:2").unwrap();
        identity.store(&directory).unwrap();
        let good = fs::read(directory.join(IDENTITY_FILE)).unwrap();
        fs::remove_file(directory.join(IDENTITY_FILE)).unwrap();
        assert_eq!(Identity::load(&directory).unwrap().as_ref(), Some(&identity));
        assert_eq!(fs::read(directory.join(IDENTITY_FILE)).unwrap(), good);
        fs::remove_file(directory.join(IDENTITY_COPY_FILE)).unwrap();
        let old = format!(
            "{HEADER_V1}\nname=a\nmember_id={:x}\ncluster_id={:x}\ninitial_cluster={}\n",
            identity.member_id, identity.cluster_id, identity.initial_cluster
        );
        fs::write(directory.join(IDENTITY_FILE), old).unwrap();
        assert_eq!(Identity::load(&directory).unwrap().as_ref(), Some(&identity));
        assert_eq!(fs::read(directory.join(IDENTITY_FILE)).unwrap(), good);
        assert_eq!(fs::read(directory.join(IDENTITY_COPY_FILE)).unwrap(), good);
        let _ = fs::remove_dir_all(&directory);
    }

    #[test]
    fn a_name_outside_the_cluster_is_refused() {
        let error = Identity::from_flags("c", "a=h:1,b=h:2").unwrap_err();
        assert!(error.to_string().contains("not listed"), "{error}");
    }
}
