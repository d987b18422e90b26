//! etcd v3 authentication and authorization as part of the replicated state:
//! users, roles, key-range permissions and whether auth is enabled.
//!
//! Everything here is applied from the log like any other request, so the
//! auth state survives restarts, snapshots and master changes, and every
//! member decides a permission question the same way at the same entry.
//! Passwords never reach the log: the server hashes them (bcrypt) before it
//! proposes, and checks a password against the stored hash before it
//! proposes an [`AuthRequest::Authenticate`]. Tokens do not reach it either:
//! an `Authenticate` entry carries the SHA-256 digest of the token the
//! proposing member made, and every member that applies it learns that the
//! digest stands for that user ([`AuthEffect::TokenIssued`]).
//!
//! Semantics follow etcd 3.4's `auth/store.go`: the `root` user and role,
//! `AuthEnable` only with a root user that has the root role, the root role
//! allowed everything, a permission check as the union of the intervals a
//! user's roles grant, and the same refusals with the same texts.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::KvError;
use crate::types::{RequestOp, ResponseHeader, TxnRequest};
use crate::varint::{Decoder, Encoder};

/// The user every auth mutation needs (with the root role), as in etcd.
pub const ROOT_USER: &str = "root";
/// The role that is allowed everything.
pub const ROOT_ROLE: &str = "root";
/// Most users, so the auth state stays small in memory and in snapshots.
pub const USERS_MAX: usize = 16_384;
/// Most roles.
pub const ROLES_MAX: usize = 16_384;
/// Most roles granted to one user.
pub const USER_ROLES_MAX: usize = 1_024;
/// Most permissions of one role.
pub const ROLE_PERMISSIONS_MAX: usize = 4_096;
/// Longest user or role name, in bytes.
pub const NAME_BYTES_MAX: usize = 1_024;
/// Longest stored password hash, in bytes (a bcrypt hash is 60).
pub const PASSWORD_HASH_BYTES_MAX: usize = 256;
/// Length of a token digest (SHA-256), in bytes.
pub const TOKEN_DIGEST_BYTES: usize = 32;

/// `authpb.Permission.Type`, with etcd's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PermissionType {
    /// `READ` (0).
    Read,
    /// `WRITE` (1).
    Write,
    /// `READWRITE` (2).
    ReadWrite,
}

impl PermissionType {
    /// etcd's enum number.
    pub fn code(self) -> u8 {
        match self {
            PermissionType::Read => 0,
            PermissionType::Write => 1,
            PermissionType::ReadWrite => 2,
        }
    }

    /// The type of an enum number, if it is one.
    pub fn of_code(code: i64) -> Option<PermissionType> {
        match code {
            0 => Some(PermissionType::Read),
            1 => Some(PermissionType::Write),
            2 => Some(PermissionType::ReadWrite),
            _ => None,
        }
    }

    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (PermissionType::ReadWrite, _)
                | (PermissionType::Read, Access::Read)
                | (PermissionType::Write, Access::Write)
        )
    }
}

/// `authpb.Permission`: a key or key range and what it allows. `range_end`
/// follows etcd's conventions: empty for the single key, `"\0"` for every
/// key from `key` on, else the exclusive end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    /// Read, write or both.
    pub perm_type: PermissionType,
    /// The first key.
    pub key: Vec<u8>,
    /// The end of the range, exclusive; see the type's doc.
    pub range_end: Vec<u8>,
}

/// A read or a write, the two questions a permission answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Range, Watch, a Txn's compares, `prev_kv`, a lease's time to live.
    Read,
    /// Put, DeleteRange, a lease's revocation.
    Write,
}

/// A user: a password hash (`None` for etcd's `--no-password` users, who can
/// only be authenticated by a client certificate) and granted roles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// The bcrypt hash, or `None`.
    pub password_hash: Option<String>,
    /// Granted roles, by name.
    pub roles: BTreeSet<String>,
}

/// A role: its permissions, sorted by key then range end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Role {
    /// The permissions, at most one per (key, range end).
    pub permissions: Vec<Permission>,
}

/// A change to the auth state, applied from the log. Every one but
/// `Authenticate` needs the caller to be root when auth is enabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthRequest {
    /// `Auth.AuthEnable`.
    Enable,
    /// `Auth.AuthDisable`.
    Disable,
    /// `Auth.UserAdd`, the password already hashed (`None`: no password).
    UserAdd {
        /// User name.
        name: String,
        /// The bcrypt hash of the password, or `None`.
        password_hash: Option<String>,
    },
    /// `Auth.UserDelete`.
    UserDelete {
        /// User name.
        name: String,
    },
    /// `Auth.UserChangePassword`, the password already hashed.
    UserChangePassword {
        /// User name.
        name: String,
        /// The bcrypt hash of the new password.
        password_hash: String,
    },
    /// `Auth.UserGrantRole`.
    UserGrantRole {
        /// User name.
        user: String,
        /// Role name.
        role: String,
    },
    /// `Auth.UserRevokeRole`.
    UserRevokeRole {
        /// User name.
        name: String,
        /// Role name.
        role: String,
    },
    /// `Auth.RoleAdd`.
    RoleAdd {
        /// Role name.
        name: String,
    },
    /// `Auth.RoleDelete`.
    RoleDelete {
        /// Role name.
        role: String,
    },
    /// `Auth.RoleGrantPermission`: replaces the type of a permission on the
    /// same key and range end, else adds one.
    RoleGrantPermission {
        /// Role name.
        name: String,
        /// The permission.
        permission: Permission,
    },
    /// `Auth.RoleRevokePermission`.
    RoleRevokePermission {
        /// Role name.
        role: String,
        /// The permission's key.
        key: Vec<u8>,
        /// The permission's range end.
        range_end: Vec<u8>,
    },
    /// `Auth.Authenticate`, after the proposing member checked the password
    /// against the auth state at `auth_revision`: if that state changed
    /// since, the entry fails with `revision of auth store is old` and the
    /// client tries again.
    Authenticate {
        /// User name.
        name: String,
        /// SHA-256 of the token the proposing member made.
        token_digest: [u8; TOKEN_DIGEST_BYTES],
        /// The auth revision the password was checked at.
        auth_revision: u64,
    },
}

/// What an applied auth request asks of the members' token keepers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthEffect {
    /// A token (by digest) now stands for `user`.
    TokenIssued {
        /// User name.
        user: String,
        /// SHA-256 of the token.
        token_digest: [u8; TOKEN_DIGEST_BYTES],
    },
    /// Every token of `user` is void (the user was deleted or its password changed).
    UserInvalidated {
        /// User name.
        user: String,
    },
    /// Every token is void (auth was disabled).
    AllInvalidated,
}

/// The result of an applied [`AuthRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthResponse {
    /// Revision of the key-value store (auth changes do not move it).
    pub header: ResponseHeader,
    /// The auth revision after the request.
    pub auth_revision: u64,
    /// What the token keepers must do, if anything.
    pub effect: Option<AuthEffect>,
}

/// The replicated auth state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthState {
    pub(crate) enabled: bool,
    /// Goes up by one with every change, as etcd's auth revision; starts at 1.
    pub(crate) revision: u64,
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) roles: BTreeMap<String, Role>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

fn valid_name(name: &str, empty: KvError) -> Result<(), KvError> {
    if name.is_empty() {
        return Err(empty);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(KvError::RequestTooLarge);
    }
    Ok(())
}

/// etcd's rule for a permission's range: a key, and either no range end, the
/// open end `"\0"`, or an end after the key.
fn valid_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

/// Whether the union of `intervals` (each `(key, range_end)` with etcd's
/// conventions) covers the keys from `key` to `range_end`.
fn covered(intervals: &[(&[u8], &[u8])], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        return intervals.iter().any(|(start, end)| match *end {
            [] => *start == key,
            [0] => key >= *start,
            end => key >= *start && key < end,
        });
    }
    // A range: walk the intervals by start, extending the covered prefix.
    let mut ranges: Vec<(&[u8], Option<&[u8]>)> = intervals
        .iter()
        .filter(|(_, end)| !end.is_empty())
        .map(|(start, end)| (*start, if *end == [0] { None } else { Some(*end) }))
        .collect();
    ranges.sort();
    let wanted_end = if range_end == [0] { None } else { Some(range_end) };
    let mut reached = key;
    for (start, end) in ranges {
        if start > reached {
            break;
        }
        match end {
            None => return true,
            Some(end) if end > reached => {
                reached = end;
                if wanted_end.is_some_and(|wanted| reached >= wanted) {
                    return true;
                }
            }
            Some(_) => {}
        }
    }
    false
}

impl AuthState {
    /// Whether auth is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision (see `AuthStatus`).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A user, if it exists.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// A role, if it exists.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// The user a call runs as, checked: `Ok(None)` when auth is disabled
    /// (everything is allowed), else the user, or etcd's refusal for a call
    /// without one or with one that does not exist.
    fn caller<'a>(&'a self, user: Option<&str>) -> Result<Option<&'a User>, KvError> {
        if !self.enabled {
            return Ok(None);
        }
        let name = user.ok_or(KvError::UserEmpty)?;
        self.users.get(name).map(Some).ok_or(KvError::PermissionDenied)
    }

    /// Whether the call names an existing user, if auth is enabled.
    pub fn check_authenticated(&self, user: Option<&str>) -> Result<(), KvError> {
        self.caller(user).map(|_| ())
    }

    fn is_root(user: &User) -> bool {
        user.roles.contains(ROOT_ROLE)
    }

    /// Whether `user` may do everything: auth disabled, or the root role.
    pub fn check_admin(&self, user: Option<&str>) -> Result<(), KvError> {
        match self.caller(user)? {
            None => Ok(()),
            Some(user) if Self::is_root(user) => Ok(()),
            Some(_) => Err(KvError::PermissionDenied),
        }
    }

    /// Whether `user` may read or write the keys from `key` to `range_end`.
    pub fn check_range(&self, user: Option<&str>, access: Access, key: &[u8], range_end: &[u8]) -> Result<(), KvError> {
        let Some(user) = self.caller(user)? else {
            return Ok(());
        };
        if Self::is_root(user) {
            return Ok(());
        }
        let intervals: Vec<(&[u8], &[u8])> = user
            .roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flat_map(|role| &role.permissions)
            .filter(|permission| permission.perm_type.allows(access))
            .map(|permission| (permission.key.as_slice(), permission.range_end.as_slice()))
            .collect();
        if covered(&intervals, key, range_end) {
            Ok(())
        } else {
            Err(KvError::PermissionDenied)
        }
    }

    /// Every key a Txn reads (its compares and ranges, `prev_kv`) and writes,
    /// in both branches and nested txns, as etcd checks a Txn: whole.
    pub fn check_txn(&self, user: Option<&str>, txn: &TxnRequest) -> Result<(), KvError> {
        if self.caller(user)?.is_none() {
            return Ok(());
        }
        for compare in &txn.compare {
            self.check_range(user, Access::Read, &compare.key, &compare.range_end)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(range) => self.check_range(user, Access::Read, &range.key, &range.range_end)?,
                RequestOp::Put(put) => {
                    self.check_range(user, Access::Write, &put.key, &[])?;
                    if put.prev_kv {
                        self.check_range(user, Access::Read, &put.key, &[])?;
                    }
                }
                RequestOp::DeleteRange(delete) => {
                    self.check_range(user, Access::Write, &delete.key, &delete.range_end)?;
                    if delete.prev_kv {
                        self.check_range(user, Access::Read, &delete.key, &delete.range_end)?;
                    }
                }
                RequestOp::Txn(nested) => self.check_txn(user, nested)?,
            }
        }
        Ok(())
    }

    /// Stateless checks before proposing, so malformed requests never reach the log.
    pub(crate) fn validate(request: &AuthRequest) -> Result<(), KvError> {
        let hash_fits = |hash: &str| {
            if hash.len() > PASSWORD_HASH_BYTES_MAX {
                Err(KvError::RequestTooLarge)
            } else {
                Ok(())
            }
        };
        match request {
            AuthRequest::Enable | AuthRequest::Disable => Ok(()),
            AuthRequest::UserAdd { name, password_hash } => {
                valid_name(name, KvError::UserEmpty)?;
                password_hash.as_deref().map_or(Ok(()), hash_fits)
            }
            AuthRequest::UserChangePassword { name, password_hash } => {
                valid_name(name, KvError::UserEmpty)?;
                hash_fits(password_hash)
            }
            AuthRequest::UserDelete { name } | AuthRequest::Authenticate { name, .. } => {
                valid_name(name, KvError::UserEmpty)
            }
            AuthRequest::UserGrantRole { user, role } | AuthRequest::UserRevokeRole { name: user, role } => {
                valid_name(user, KvError::UserEmpty)?;
                valid_name(role, KvError::RoleEmpty)
            }
            AuthRequest::RoleAdd { name } | AuthRequest::RoleDelete { role: name } => {
                valid_name(name, KvError::RoleEmpty)
            }
            AuthRequest::RoleGrantPermission { name, permission } => {
                valid_name(name, KvError::RoleEmpty)?;
                if !valid_range(&permission.key, &permission.range_end) {
                    return Err(KvError::InvalidAuthManagement);
                }
                Ok(())
            }
            AuthRequest::RoleRevokePermission { role, .. } => valid_name(role, KvError::RoleEmpty),
        }
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, KvError> {
        self.users.get_mut(name).ok_or(KvError::UserNotFound)
    }

    fn role_mut(&mut self, name: &str) -> Result<&mut Role, KvError> {
        self.roles.get_mut(name).ok_or(KvError::RoleNotFound)
    }

    /// Applies one auth request on behalf of `caller`. A failed request
    /// changes nothing; a successful one other than `Authenticate` moves the
    /// auth revision by one.
    pub(crate) fn apply(&mut self, caller: Option<&str>, request: &AuthRequest) -> Result<AuthResponse, KvError> {
        Self::validate(request)?;
        if !matches!(request, AuthRequest::Authenticate { .. }) {
            self.check_admin(caller)?;
        }
        let effect = match request {
            AuthRequest::Enable => {
                if self.enabled {
                    None
                } else {
                    let root = self.users.get(ROOT_USER).ok_or(KvError::RootUserNotExist)?;
                    if !Self::is_root(root) {
                        return Err(KvError::RootRoleNotExist);
                    }
                    self.enabled = true;
                    None
                }
            }
            AuthRequest::Disable => {
                self.enabled = false;
                Some(AuthEffect::AllInvalidated)
            }
            AuthRequest::UserAdd { name, password_hash } => {
                if self.users.contains_key(name) {
                    return Err(KvError::UserAlreadyExist);
                }
                if self.users.len() >= USERS_MAX {
                    return Err(KvError::TooManyAuthEntries);
                }
                let user = User {
                    password_hash: password_hash.clone(),
                    roles: BTreeSet::new(),
                };
                self.users.insert(name.clone(), user);
                None
            }
            AuthRequest::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(KvError::InvalidAuthManagement);
                }
                self.users.remove(name).ok_or(KvError::UserNotFound)?;
                Some(AuthEffect::UserInvalidated { user: name.clone() })
            }
            AuthRequest::UserChangePassword { name, password_hash } => {
                self.user_mut(name)?.password_hash = Some(password_hash.clone());
                Some(AuthEffect::UserInvalidated { user: name.clone() })
            }
            AuthRequest::UserGrantRole { user, role } => {
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    return Err(KvError::RoleNotFound);
                }
                let user = self.user_mut(user)?;
                if !user.roles.contains(role) {
                    if user.roles.len() >= USER_ROLES_MAX {
                        return Err(KvError::TooManyAuthEntries);
                    }
                    user.roles.insert(role.clone());
                }
                None
            }
            AuthRequest::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT_USER && role == ROOT_ROLE {
                    return Err(KvError::InvalidAuthManagement);
                }
                if !self.user_mut(name)?.roles.remove(role) {
                    return Err(KvError::RoleNotGranted);
                }
                None
            }
            AuthRequest::RoleAdd { name } => {
                if self.roles.contains_key(name) {
                    return Err(KvError::RoleAlreadyExist);
                }
                if self.roles.len() >= ROLES_MAX {
                    return Err(KvError::TooManyAuthEntries);
                }
                self.roles.insert(name.clone(), Role::default());
                None
            }
            AuthRequest::RoleDelete { role } => {
                if self.enabled && role == ROOT_ROLE {
                    return Err(KvError::InvalidAuthManagement);
                }
                self.roles.remove(role).ok_or(KvError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.remove(role);
                }
                None
            }
            AuthRequest::RoleGrantPermission { name, permission } => {
                let role = self.role_mut(name)?;
                let place = role.permissions.binary_search_by(|held| {
                    (&held.key, &held.range_end).cmp(&(&permission.key, &permission.range_end))
                });
                match place {
                    Ok(at) => role.permissions[at].perm_type = permission.perm_type,
                    Err(at) => {
                        if role.permissions.len() >= ROLE_PERMISSIONS_MAX {
                            return Err(KvError::TooManyAuthEntries);
                        }
                        role.permissions.insert(at, permission.clone());
                    }
                }
                None
            }
            AuthRequest::RoleRevokePermission { role, key, range_end } => {
                let role = self.role_mut(role)?;
                let before = role.permissions.len();
                role.permissions
                    .retain(|held| !(held.key == *key && held.range_end == *range_end));
                if role.permissions.len() == before {
                    return Err(KvError::PermissionNotGranted);
                }
                None
            }
            AuthRequest::Authenticate {
                name,
                token_digest,
                auth_revision,
            } => {
                if !self.enabled {
                    return Err(KvError::AuthNotEnabled);
                }
                if *auth_revision != self.revision {
                    return Err(KvError::AuthOldRevision);
                }
                if !self.users.contains_key(name) {
                    return Err(KvError::AuthFailed);
                }
                return Ok(AuthResponse {
                    header: ResponseHeader::default(),
                    auth_revision: self.revision,
                    effect: Some(AuthEffect::TokenIssued {
                        user: name.clone(),
                        token_digest: *token_digest,
                    }),
                });
            }
        };
        self.revision += 1;
        Ok(AuthResponse {
            header: ResponseHeader::default(),
            auth_revision: self.revision,
            effect,
        })
    }

    // ------------------------------------------------------------ encoding

    pub(crate) fn encode(&self, encoder: &mut Encoder) {
        encoder.bool(self.enabled);
        encoder.u64(self.revision);
        encoder.len(self.users.len());
        for (name, user) in &self.users {
            encoder.bytes(name.as_bytes());
            encode_optional_text(encoder, user.password_hash.as_deref());
            encoder.len(user.roles.len());
            for role in &user.roles {
                encoder.bytes(role.as_bytes());
            }
        }
        encoder.len(self.roles.len());
        for (name, role) in &self.roles {
            encoder.bytes(name.as_bytes());
            encoder.len(role.permissions.len());
            for permission in &role.permissions {
                encode_permission(encoder, permission);
            }
        }
    }

    /// Reads [`AuthState::encode`]'s output, checking every bound and order.
    pub(crate) fn decode(decoder: &mut Decoder<'_>) -> Result<AuthState, KvError> {
        let corrupt = KvError::Corrupt;
        let enabled = decoder.bool()?;
        let revision = decoder.u64()?;
        if revision == 0 {
            return Err(corrupt("auth revision 0"));
        }
        let mut users = BTreeMap::new();
        let count = decoder.count(3)?;
        if count > USERS_MAX {
            return Err(corrupt("too many users"));
        }
        for _ in 0..count {
            let name = decode_name(decoder)?;
            let password_hash = decode_optional_text(decoder)?;
            let mut roles = BTreeSet::new();
            let role_count = decoder.count(1)?;
            if role_count > USER_ROLES_MAX {
                return Err(corrupt("too many roles of a user"));
            }
            for _ in 0..role_count {
                let role = decode_name(decoder)?;
                if roles.last().is_some_and(|last: &String| *last >= role) {
                    return Err(corrupt("a user's roles out of order"));
                }
                roles.insert(role);
            }
            if users
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= name)
            {
                return Err(corrupt("users out of order"));
            }
            users.insert(name, User { password_hash, roles });
        }
        let mut roles = BTreeMap::new();
        let count = decoder.count(2)?;
        if count > ROLES_MAX {
            return Err(corrupt("too many roles"));
        }
        for _ in 0..count {
            let name = decode_name(decoder)?;
            let permission_count = decoder.count(3)?;
            if permission_count > ROLE_PERMISSIONS_MAX {
                return Err(corrupt("too many permissions of a role"));
            }
            let mut permissions: Vec<Permission> = Vec::with_capacity(permission_count);
            for _ in 0..permission_count {
                let permission = decode_permission(decoder)?;
                if permissions
                    .last()
                    .is_some_and(|last| (&last.key, &last.range_end) >= (&permission.key, &permission.range_end))
                {
                    return Err(corrupt("a role's permissions out of order"));
                }
                permissions.push(permission);
            }
            if roles
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= name)
            {
                return Err(corrupt("roles out of order"));
            }
            roles.insert(name, Role { permissions });
        }
        Ok(AuthState {
            enabled,
            revision,
            users,
            roles,
        })
    }
}

fn encode_optional_text(encoder: &mut Encoder, text: Option<&str>) {
    encoder.bool(text.is_some());
    if let Some(text) = text {
        encoder.bytes(text.as_bytes());
    }
}

fn decode_text(decoder: &mut Decoder<'_>) -> Result<String, KvError> {
    String::from_utf8(decoder.bytes()?).map_err(|_| KvError::Corrupt("a name is not UTF-8"))
}

fn decode_name(decoder: &mut Decoder<'_>) -> Result<String, KvError> {
    let name = decode_text(decoder)?;
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(KvError::Corrupt("a user or role name is empty or too long"));
    }
    Ok(name)
}

fn decode_optional_text(decoder: &mut Decoder<'_>) -> Result<Option<String>, KvError> {
    if !decoder.bool()? {
        return Ok(None);
    }
    let text = decode_text(decoder)?;
    if text.len() > PASSWORD_HASH_BYTES_MAX {
        return Err(KvError::Corrupt("a password hash is too long"));
    }
    Ok(Some(text))
}

fn encode_permission(encoder: &mut Encoder, permission: &Permission) {
    encoder.u8(permission.perm_type.code());
    encoder.bytes(&permission.key);
    encoder.bytes(&permission.range_end);
}

fn decode_permission(decoder: &mut Decoder<'_>) -> Result<Permission, KvError> {
    let perm_type =
        PermissionType::of_code(i64::from(decoder.u8()?)).ok_or(KvError::Corrupt("unknown permission type"))?;
    let key = decoder.bytes()?;
    let range_end = decoder.bytes()?;
    if !valid_range(&key, &range_end) {
        return Err(KvError::Corrupt("a permission's range is invalid"));
    }
    Ok(Permission {
        perm_type,
        key,
        range_end,
    })
}

const AUTH_ENABLE: u8 = 1;
const AUTH_DISABLE: u8 = 2;
const AUTH_USER_ADD: u8 = 3;
const AUTH_USER_DELETE: u8 = 4;
const AUTH_USER_CHANGE_PASSWORD: u8 = 5;
const AUTH_USER_GRANT_ROLE: u8 = 6;
const AUTH_USER_REVOKE_ROLE: u8 = 7;
const AUTH_ROLE_ADD: u8 = 8;
const AUTH_ROLE_DELETE: u8 = 9;
const AUTH_ROLE_GRANT_PERMISSION: u8 = 10;
const AUTH_ROLE_REVOKE_PERMISSION: u8 = 11;
const AUTH_AUTHENTICATE: u8 = 12;

impl AuthRequest {
    pub(crate) fn encode(&self, encoder: &mut Encoder) {
        let text = |encoder: &mut Encoder, text: &str| encoder.bytes(text.as_bytes());
        match self {
            AuthRequest::Enable => encoder.u8(AUTH_ENABLE),
            AuthRequest::Disable => encoder.u8(AUTH_DISABLE),
            AuthRequest::UserAdd { name, password_hash } => {
                encoder.u8(AUTH_USER_ADD);
                text(encoder, name);
                encode_optional_text(encoder, password_hash.as_deref());
            }
            AuthRequest::UserDelete { name } => {
                encoder.u8(AUTH_USER_DELETE);
                text(encoder, name);
            }
            AuthRequest::UserChangePassword { name, password_hash } => {
                encoder.u8(AUTH_USER_CHANGE_PASSWORD);
                text(encoder, name);
                text(encoder, password_hash);
            }
            AuthRequest::UserGrantRole { user, role } => {
                encoder.u8(AUTH_USER_GRANT_ROLE);
                text(encoder, user);
                text(encoder, role);
            }
            AuthRequest::UserRevokeRole { name, role } => {
                encoder.u8(AUTH_USER_REVOKE_ROLE);
                text(encoder, name);
                text(encoder, role);
            }
            AuthRequest::RoleAdd { name } => {
                encoder.u8(AUTH_ROLE_ADD);
                text(encoder, name);
            }
            AuthRequest::RoleDelete { role } => {
                encoder.u8(AUTH_ROLE_DELETE);
                text(encoder, role);
            }
            AuthRequest::RoleGrantPermission { name, permission } => {
                encoder.u8(AUTH_ROLE_GRANT_PERMISSION);
                text(encoder, name);
                encoder.u8(permission.perm_type.code());
                encoder.bytes(&permission.key);
                encoder.bytes(&permission.range_end);
            }
            AuthRequest::RoleRevokePermission { role, key, range_end } => {
                encoder.u8(AUTH_ROLE_REVOKE_PERMISSION);
                text(encoder, role);
                encoder.bytes(key);
                encoder.bytes(range_end);
            }
            AuthRequest::Authenticate {
                name,
                token_digest,
                auth_revision,
            } => {
                encoder.u8(AUTH_AUTHENTICATE);
                text(encoder, name);
                encoder.bytes(token_digest);
                encoder.u64(*auth_revision);
            }
        }
    }

    pub(crate) fn decode(decoder: &mut Decoder<'_>) -> Result<AuthRequest, KvError> {
        Ok(match decoder.u8()? {
            AUTH_ENABLE => AuthRequest::Enable,
            AUTH_DISABLE => AuthRequest::Disable,
            AUTH_USER_ADD => AuthRequest::UserAdd {
                name: decode_text(decoder)?,
                password_hash: decode_optional_text(decoder)?,
            },
            AUTH_USER_DELETE => AuthRequest::UserDelete {
                name: decode_text(decoder)?,
            },
            AUTH_USER_CHANGE_PASSWORD => AuthRequest::UserChangePassword {
                name: decode_text(decoder)?,
                password_hash: decode_text(decoder)?,
            },
            AUTH_USER_GRANT_ROLE => AuthRequest::UserGrantRole {
                user: decode_text(decoder)?,
                role: decode_text(decoder)?,
            },
            AUTH_USER_REVOKE_ROLE => AuthRequest::UserRevokeRole {
                name: decode_text(decoder)?,
                role: decode_text(decoder)?,
            },
            AUTH_ROLE_ADD => AuthRequest::RoleAdd {
                name: decode_text(decoder)?,
            },
            AUTH_ROLE_DELETE => AuthRequest::RoleDelete {
                role: decode_text(decoder)?,
            },
            AUTH_ROLE_GRANT_PERMISSION => AuthRequest::RoleGrantPermission {
                name: decode_text(decoder)?,
                permission: Permission {
                    perm_type: PermissionType::of_code(i64::from(decoder.u8()?))
                        .ok_or(KvError::Corrupt("unknown permission type"))?,
                    key: decoder.bytes()?,
                    range_end: decoder.bytes()?,
                },
            },
            AUTH_ROLE_REVOKE_PERMISSION => AuthRequest::RoleRevokePermission {
                role: decode_text(decoder)?,
                key: decoder.bytes()?,
                range_end: decoder.bytes()?,
            },
            AUTH_AUTHENTICATE => AuthRequest::Authenticate {
                name: decode_text(decoder)?,
                token_digest: decoder
                    .bytes()?
                    .try_into()
                    .map_err(|_| KvError::Corrupt("a token digest is not 32 bytes"))?,
                auth_revision: decoder.u64()?,
            },
            _ => return Err(KvError::Corrupt("unknown auth request")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval_cover(intervals: &[(&str, &str)], key: &str, range_end: &str) -> bool {
        let intervals: Vec<(&[u8], &[u8])> = intervals
            .iter()
            .map(|(start, end)| (start.as_bytes(), end.as_bytes()))
            .collect();
        covered(&intervals, key.as_bytes(), range_end.as_bytes())
    }

    #[test]
    fn a_range_is_covered_by_the_union_of_intervals() {
        assert!(interval_cover(&[("a", "")], "a", ""));
        assert!(!interval_cover(&[("a", "")], "b", ""));
        assert!(interval_cover(&[("a", "c")], "b", ""));
        assert!(!interval_cover(&[("a", "c")], "c", ""));
        assert!(interval_cover(&[("a", "c"), ("c", "e")], "a", "e"));
        assert!(interval_cover(&[("c", "e"), ("a", "d")], "b", "e"));
        assert!(!interval_cover(&[("a", "c"), ("d", "e")], "a", "e"));
        assert!(!interval_cover(&[("a", "c")], "a", "d"));
        assert!(interval_cover(&[("a", "\0")], "b", "\0"));
        assert!(!interval_cover(&[("a", "z")], "b", "\0"));
        assert!(interval_cover(&[("a", "b"), ("b", "\0")], "a", "\0"));
        // A single-key permission never covers a range, not even its own key's.
        assert!(!interval_cover(&[("a", "")], "a", "a\0"));
    }

    fn hash(text: &str) -> Option<String> {
        Some(text.to_string())
    }

    fn state_with_root() -> AuthState {
        let mut auth = AuthState::default();
        let add = AuthRequest::UserAdd {
            name: ROOT_USER.into(),
            password_hash: hash("h"),
        };
        auth.apply(None, &add).unwrap();
        let grant = AuthRequest::UserGrantRole {
            user: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        };
        auth.apply(None, &grant).unwrap();
        auth
    }

    #[test]
    fn enable_needs_a_root_user_with_the_root_role() {
        let mut auth = AuthState::default();
        assert_eq!(auth.apply(None, &AuthRequest::Enable), Err(KvError::RootUserNotExist));
        let add = AuthRequest::UserAdd {
            name: ROOT_USER.into(),
            password_hash: hash("h"),
        };
        auth.apply(None, &add).unwrap();
        assert_eq!(auth.apply(None, &AuthRequest::Enable), Err(KvError::RootRoleNotExist));
        let mut auth = state_with_root();
        let revision = auth.revision();
        auth.apply(None, &AuthRequest::Enable).unwrap();
        assert!(auth.enabled());
        assert_eq!(auth.revision(), revision + 1);
    }

    #[test]
    fn while_enabled_only_root_manages_and_root_cannot_be_removed() {
        let mut auth = state_with_root();
        auth.apply(None, &AuthRequest::Enable).unwrap();
        let add = AuthRequest::RoleAdd { name: "r".into() };
        assert_eq!(auth.apply(None, &add), Err(KvError::UserEmpty));
        assert_eq!(auth.apply(Some("nobody"), &add), Err(KvError::PermissionDenied));
        auth.apply(Some(ROOT_USER), &add).unwrap();
        let delete_root = AuthRequest::UserDelete { name: ROOT_USER.into() };
        assert_eq!(
            auth.apply(Some(ROOT_USER), &delete_root),
            Err(KvError::InvalidAuthManagement)
        );
        let revoke_root = AuthRequest::UserRevokeRole {
            name: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        };
        assert_eq!(
            auth.apply(Some(ROOT_USER), &revoke_root),
            Err(KvError::InvalidAuthManagement)
        );
        assert_eq!(
            auth.apply(Some(ROOT_USER), &AuthRequest::Disable).unwrap().effect,
            Some(AuthEffect::AllInvalidated)
        );
        assert!(!auth.enabled());
    }

    #[test]
    fn permissions_grant_reads_and_writes_on_ranges() {
        let mut auth = state_with_root();
        for request in [
            AuthRequest::UserAdd {
                name: "u".into(),
                password_hash: hash("h"),
            },
            AuthRequest::RoleAdd { name: "r".into() },
            AuthRequest::RoleGrantPermission {
                name: "r".into(),
                permission: Permission {
                    perm_type: PermissionType::Read,
                    key: b"foo/".to_vec(),
                    range_end: b"foo0".to_vec(),
                },
            },
            AuthRequest::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
            AuthRequest::Enable,
        ] {
            auth.apply(Some(ROOT_USER), &request).unwrap();
        }
        let user = Some("u");
        assert_eq!(auth.check_range(user, Access::Read, b"foo/a", b""), Ok(()));
        assert_eq!(auth.check_range(user, Access::Read, b"foo/", b"foo0"), Ok(()));
        assert_eq!(
            auth.check_range(user, Access::Write, b"foo/a", b""),
            Err(KvError::PermissionDenied)
        );
        assert_eq!(
            auth.check_range(user, Access::Read, b"bar", b""),
            Err(KvError::PermissionDenied)
        );
        // Granting again on the same range replaces the type.
        let upgrade = AuthRequest::RoleGrantPermission {
            name: "r".into(),
            permission: Permission {
                perm_type: PermissionType::ReadWrite,
                key: b"foo/".to_vec(),
                range_end: b"foo0".to_vec(),
            },
        };
        auth.apply(Some(ROOT_USER), &upgrade).unwrap();
        assert_eq!(auth.role("r").unwrap().permissions.len(), 1);
        assert_eq!(auth.check_range(user, Access::Write, b"foo/a", b""), Ok(()));
        assert_eq!(auth.check_admin(user), Err(KvError::PermissionDenied));
        // Deleting the role takes it from the user.
        auth.apply(Some(ROOT_USER), &AuthRequest::RoleDelete { role: "r".into() })
            .unwrap();
        assert!(auth.user("u").unwrap().roles.is_empty());
        assert_eq!(
            auth.check_range(user, Access::Read, b"foo/a", b""),
            Err(KvError::PermissionDenied)
        );
    }

    #[test]
    fn authenticate_fails_on_an_old_auth_revision() {
        let mut auth = state_with_root();
        let authenticate = |revision| AuthRequest::Authenticate {
            name: ROOT_USER.into(),
            token_digest: [7; TOKEN_DIGEST_BYTES],
            auth_revision: revision,
        };
        assert_eq!(
            auth.apply(None, &authenticate(auth.revision())),
            Err(KvError::AuthNotEnabled)
        );
        auth.apply(None, &AuthRequest::Enable).unwrap();
        let revision = auth.revision();
        assert_eq!(
            auth.apply(None, &authenticate(revision - 1)),
            Err(KvError::AuthOldRevision)
        );
        let issued = auth.apply(None, &authenticate(revision)).unwrap();
        assert_eq!(auth.revision(), revision, "authenticating changes nothing");
        assert_eq!(
            issued.effect,
            Some(AuthEffect::TokenIssued {
                user: ROOT_USER.into(),
                token_digest: [7; TOKEN_DIGEST_BYTES]
            })
        );
    }

    #[test]
    fn the_state_and_every_request_round_trip_through_their_encodings() {
        let mut auth = state_with_root();
        let requests = [
            AuthRequest::UserAdd {
                name: "u".into(),
                password_hash: None,
            },
            AuthRequest::RoleAdd { name: "r".into() },
            AuthRequest::RoleGrantPermission {
                name: "r".into(),
                permission: Permission {
                    perm_type: PermissionType::Write,
                    key: b"k".to_vec(),
                    range_end: vec![0],
                },
            },
            AuthRequest::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
            AuthRequest::UserChangePassword {
                name: "u".into(),
                password_hash: "x".into(),
            },
            AuthRequest::RoleRevokePermission {
                role: "r".into(),
                key: b"k".to_vec(),
                range_end: vec![0],
            },
            AuthRequest::UserRevokeRole {
                name: "u".into(),
                role: "r".into(),
            },
            AuthRequest::Enable,
            AuthRequest::Authenticate {
                name: "u".into(),
                token_digest: [1; TOKEN_DIGEST_BYTES],
                auth_revision: 9,
            },
            AuthRequest::Disable,
            AuthRequest::RoleDelete { role: "r".into() },
            AuthRequest::UserDelete { name: "u".into() },
        ];
        for request in &requests {
            let mut encoder = Encoder::default();
            request.encode(&mut encoder);
            let mut decoder = Decoder::new(&encoder.bytes);
            assert_eq!(&AuthRequest::decode(&mut decoder).unwrap(), request);
            decoder.finish().unwrap();
        }
        for request in &requests[..4] {
            auth.apply(None, request).unwrap();
        }
        let mut encoder = Encoder::default();
        auth.encode(&mut encoder);
        let mut decoder = Decoder::new(&encoder.bytes);
        assert_eq!(AuthState::decode(&mut decoder).unwrap(), auth);
        for cut in 0..encoder.bytes.len() {
            let mut decoder = Decoder::new(&encoder.bytes[..cut]);
            assert!(AuthState::decode(&mut decoder).is_err(), "cut at {cut}");
        }
    }
}
