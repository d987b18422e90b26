//! Errors a client or the server can act on, with etcd's exact messages.

/// The gRPC status class of a [`KvError`], so the server can map it 1:1 onto
/// a gRPC status without matching on strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// The request itself is malformed or not allowed (gRPC `INVALID_ARGUMENT`).
    InvalidArgument,
    /// A revision outside the retained window (gRPC `OUT_OF_RANGE`).
    OutOfRange,
    /// A named object does not exist (gRPC `NOT_FOUND`).
    NotFound,
    /// The state does not allow the request (gRPC `FAILED_PRECONDITION`).
    FailedPrecondition,
    /// A configured bound was reached (gRPC `RESOURCE_EXHAUSTED`).
    ResourceExhausted,
    /// Stored or received bytes are damaged (gRPC `DATA_LOSS`).
    DataLoss,
    /// The caller may not do this (gRPC `PERMISSION_DENIED`).
    PermissionDenied,
    /// The caller's credentials are not valid (gRPC `UNAUTHENTICATED`).
    Unauthenticated,
}

/// Every error the state machine returns. `Display` gives the exact string
/// etcd clients match on; [`KvError::code`] gives the gRPC class.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A read or watch asked for a revision that compaction removed.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read or compaction asked for a revision not yet written.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A put, grant or revoke named a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant asked for an ID that is already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant asked for a TTL above [`crate::LEASE_TTL_SECONDS_MAX`].
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// An empty key where a key is required.
    #[error("etcdserver: key is not provided")]
    KeyNotProvided,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a non-empty value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a non-zero lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A Txn writes one key twice (two puts, or a put inside a delete range).
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A Txn branch has more operations than `txn_operations_max`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOperations,
    /// The encoded request exceeds `request_bytes_max`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// Retained data exceeds `database_bytes_max`; writes are refused until a compaction.
    #[error("etcdserver: mvcc: database space exceeded")]
    DatabaseSpaceExceeded,
    /// A watch create reused a watch ID that is active on this stream.
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateWatchId,
    /// A watch stream already has `watchers_max` watchers.
    #[error("synod: too many watchers on this stream")]
    TooManyWatchers,
    /// Activating one more alarm would pass [`crate::ALARMS_MAX`].
    #[error("synod: too many alarms")]
    TooManyAlarms,
    /// A fencing token no longer matches the lock key (the holder lost the lock).
    #[error("synod: sequencer is stale")]
    StaleSequencer,
    /// Auth is enabled and the call names no user.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// The user may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// `AuthEnable` without a root user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// `AuthEnable` while the root user lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// `UserAdd` of an existing user.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// No such user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// `RoleAdd` of an existing role.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// No such role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// A wrong user name or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// `UserRevokeRole` of a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// `RoleRevokePermission` of a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// `Authenticate` while auth is disabled.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token that is unknown or expired.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// A change that would lock root out, or a permission with an invalid range.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthManagement,
    /// The auth state changed between a password check and its `Authenticate` entry.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// One more user, role, grant or permission would pass its bound.
    #[error("synod: too many users, roles or permissions")]
    TooManyAuthEntries,
    /// Encoded bytes (a log entry or a snapshot) failed validation.
    #[error("synod: corrupt data: {0}")]
    Corrupt(&'static str),
}

impl KvError {
    /// The gRPC status class etcd uses for this error.
    pub fn code(&self) -> Code {
        match self {
            KvError::Compacted | KvError::FutureRevision | KvError::LeaseTtlTooLarge => Code::OutOfRange,
            KvError::LeaseNotFound => Code::NotFound,
            KvError::LeaseExists | KvError::StaleSequencer | KvError::DuplicateWatchId => Code::FailedPrecondition,
            KvError::KeyNotProvided
            | KvError::KeyNotFound
            | KvError::ValueProvided
            | KvError::LeaseProvided
            | KvError::DuplicateKey
            | KvError::TooManyOperations
            | KvError::RequestTooLarge => Code::InvalidArgument,
            KvError::DatabaseSpaceExceeded | KvError::TooManyWatchers | KvError::TooManyAlarms => {
                Code::ResourceExhausted
            }
            KvError::Corrupt(_) => Code::DataLoss,
            KvError::UserEmpty
            | KvError::RoleEmpty
            | KvError::AuthFailed
            | KvError::InvalidAuthManagement
            | KvError::AuthOldRevision => Code::InvalidArgument,
            KvError::PermissionDenied => Code::PermissionDenied,
            KvError::RootUserNotExist
            | KvError::RootRoleNotExist
            | KvError::UserAlreadyExist
            | KvError::UserNotFound
            | KvError::RoleAlreadyExist
            | KvError::RoleNotFound
            | KvError::RoleNotGranted
            | KvError::PermissionNotGranted
            | KvError::AuthNotEnabled => Code::FailedPrecondition,
            KvError::InvalidAuthToken => Code::Unauthenticated,
            KvError::TooManyAuthEntries => Code::ResourceExhausted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes_match_etcd() {
        let cases = [
            (
                KvError::Compacted,
                "etcdserver: mvcc: required revision has been compacted",
                Code::OutOfRange,
            ),
            (
                KvError::FutureRevision,
                "etcdserver: mvcc: required revision is a future revision",
                Code::OutOfRange,
            ),
            (
                KvError::LeaseNotFound,
                "etcdserver: requested lease not found",
                Code::NotFound,
            ),
            (
                KvError::LeaseExists,
                "etcdserver: lease already exists",
                Code::FailedPrecondition,
            ),
            (
                KvError::KeyNotProvided,
                "etcdserver: key is not provided",
                Code::InvalidArgument,
            ),
            (KvError::KeyNotFound, "etcdserver: key not found", Code::InvalidArgument),
            (
                KvError::DuplicateKey,
                "etcdserver: duplicate key given in txn request",
                Code::InvalidArgument,
            ),
            (
                KvError::RequestTooLarge,
                "etcdserver: request is too large",
                Code::InvalidArgument,
            ),
            (
                KvError::DatabaseSpaceExceeded,
                "etcdserver: mvcc: database space exceeded",
                Code::ResourceExhausted,
            ),
            (
                KvError::UserEmpty,
                "etcdserver: user name is empty",
                Code::InvalidArgument,
            ),
            (
                KvError::PermissionDenied,
                "etcdserver: permission denied",
                Code::PermissionDenied,
            ),
            (
                KvError::AuthFailed,
                "etcdserver: authentication failed, invalid user ID or password",
                Code::InvalidArgument,
            ),
            (
                KvError::InvalidAuthToken,
                "etcdserver: invalid auth token",
                Code::Unauthenticated,
            ),
            (
                KvError::RootUserNotExist,
                "etcdserver: root user does not exist",
                Code::FailedPrecondition,
            ),
        ];
        for (error, message, code) in cases {
            assert_eq!(error.to_string(), message);
            assert_eq!(error.code(), code);
        }
    }
}
