//! The member's identity file in its data directory.
//!
//! Written once, on the first start, before anything else goes into the data
//! directory; its presence is what "this directory holds a member" means. A
//! restarted member takes its name, IDs and peers from here, never from flags,
//! so a changed `--initial-cluster` cannot silently move it to another cluster.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{cluster_id, parse_initial_cluster, ConfigError, MemberSpec};

/// File name inside the data directory.
/// The identity file's name in the data directory.
pub const IDENTITY_FILE: &str = "member";
const HEADER: &str = "synod-member-v1";

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
            cluster_id: cluster_id(&members),
            initial_cluster: initial_cluster.to_string(),
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
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        let malformed = |reason: &str| IdentityError::Malformed {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let text = String::from_utf8(text).map_err(|_| malformed("not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(malformed("unknown header"));
        }
        let mut field = |key: &str| -> Result<String, IdentityError> {
            let line = lines.next().ok_or_else(|| malformed("ends early"))?;
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| malformed(&format!("expected {key}=")))
        };
        let name = field("name")?;
        let member_id = u64::from_str_radix(&field("member_id")?, 16).map_err(|_| malformed("bad member_id"))?;
        let cluster_id = u64::from_str_radix(&field("cluster_id")?, 16).map_err(|_| malformed("bad cluster_id"))?;
        let initial_cluster = field("initial_cluster")?;
        let identity = Identity::from_flags(&name, &initial_cluster).map_err(|error| malformed(&error.to_string()))?;
        if identity.member_id != member_id || identity.cluster_id != cluster_id {
            return Err(malformed("IDs do not match the recorded initial cluster"));
        }
        Ok(Some(identity))
    }

    /// Writes the identity durably (temporary file, fsync, rename, directory fsync).
    pub fn store(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: data_dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(data_dir).map_err(io)?;
        let temporary = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
        let text = format!(
            "{HEADER}\nname={}\nmember_id={:x}\ncluster_id={:x}\ninitial_cluster={}\n",
            self.name, self.member_id, self.cluster_id, self.initial_cluster
        );
        let mut file = fs::File::create(&temporary).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&temporary, data_dir.join(IDENTITY_FILE)).map_err(io)?;
        fs::File::open(data_dir)
            .and_then(|directory| directory.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_damage_is_reported() {
        let directory = std::env::temp_dir().join(format!("synod-identity-{}", std::process::id()));
        let _ = fs::remove_dir_all(&directory);
        assert_eq!(Identity::load(&directory).unwrap(), None);
        let identity = Identity::from_flags("b", "a=127.0.0.1:1,b=127.0.0.1:2").unwrap();
        identity.store(&directory).unwrap();
        assert_eq!(Identity::load(&directory).unwrap(), Some(identity));
        fs::write(directory.join(IDENTITY_FILE), b"garbage").unwrap();
        let error = Identity::load(&directory).unwrap_err();
        assert!(error.to_string().contains("damaged member file"), "{error}");
        let _ = fs::remove_dir_all(&directory);
    }

    #[test]
    fn a_name_outside_the_cluster_is_refused() {
        let error = Identity::from_flags("c", "a=h:1,b=h:2").unwrap_err();
        assert!(error.to_string().contains("not listed"), "{error}");
    }
}
