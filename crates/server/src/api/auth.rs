//! `etcdserverpb.Auth`, and who a call runs as.
//!
//! A call names its user with a token in the `token` metadata (etcd's
//! clients; `authorization` is accepted too), got from `Authenticate`; or,
//! with `--client-cert-auth`, by the common name of its client certificate
//! when it carries no token, as in etcd. Every Auth call is answered by the
//! master (followers forward it, with the token), so each sees the newest
//! auth state. Passwords are checked and hashed here, on the blocking pool and
//! at most [`PASSWORD_CHECKS_MAX`] at a time; only bcrypt hashes and token
//! digests reach the log.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use synod_kv::{AuthRequest, KvError, Permission, PermissionType, Request, Response};
use synod_proto::authpb;
use synod_proto::etcdserverpb::auth_client::AuthClient;
use synod_proto::etcdserverpb::auth_server::Auth;
use synod_proto::etcdserverpb::*;
use tonic::metadata::MetadataMap;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::kv::SEQUENCER_HEADER;
use super::{convert, Api, FORWARDED_HEADER};
use crate::tls::ClientCertificate;
use crate::tokens;

/// Metadata key in which a follower forwarding a call names the user whose
/// client certificate it verified; believed only on a connection whose own
/// certificate is a member's (see [`crate::tls::TlsFiles::members`]).
pub const FORWARDED_USER_HEADER: &str = "synod-forwarded-user";

/// Metadata key of a token, as etcd's clients send it.
pub const TOKEN_HEADER: &str = "token";
/// The other metadata key etcd accepts a token under.
const AUTHORIZATION_HEADER: &str = "authorization";
/// Longest token accepted, in bytes (synod's are 32).
const TOKEN_BYTES_MAX: usize = 256;
/// Longest password accepted, in bytes; bcrypt uses the first 72.
pub const PASSWORD_BYTES_MAX: usize = 1_024;
/// Password hashes computed or checked at once on one member: each takes
/// tens of milliseconds of a core at the default cost.
pub const PASSWORD_CHECKS_MAX: usize = 2;

/// How long an unknown token is waited for before it is refused.
pub const TOKEN_WAIT: Duration = Duration::from_secs(1);

/// What a request says of its caller, read before any wait.
enum Credentials {
    Token(String),
    User(Option<String>),
}

/// Who a call runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The server itself (a lease it expires, an alarm it raises): not checked.
    Server,
    /// A client, with its user if it named one.
    Client(Option<String>),
}

impl Caller {
    /// The user a client call names, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::Server => None,
            Caller::Client(user) => user.as_deref(),
        }
    }

    /// The request as the log carries it: a client's in an envelope naming
    /// its user, checked when it is applied.
    pub fn wrap(&self, request: Request) -> Request {
        match self {
            Caller::Server => request,
            Caller::Client(user) => Request::Client {
                user: user.clone(),
                request: Box::new(request),
            },
        }
    }
}

fn token_of(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
    let Some(value) = metadata
        .get(TOKEN_HEADER)
        .or_else(|| metadata.get(AUTHORIZATION_HEADER))
    else {
        return Ok(None);
    };
    let invalid = || convert::kv_error(KvError::InvalidAuthToken);
    let token = value.to_str().map_err(|_| invalid())?;
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    if token.len() > TOKEN_BYTES_MAX {
        return Err(invalid());
    }
    Ok(Some(token))
}

/// The metadata a follower passes on when it forwards a call to the master:
/// the forwarded mark, the caller's token and a sequencer.
pub fn forward<T>(request: GrpcRequest<T>) -> GrpcRequest<T> {
    let metadata = forwarded_metadata(&request);
    let mut outgoing = GrpcRequest::new(request.into_inner());
    *outgoing.metadata_mut() = metadata;
    outgoing
}

/// The metadata of a call forwarded on behalf of `request` ([`forward`]), for
/// a call built anew (a stream opened towards the master).
pub fn forwarded_metadata<T>(request: &GrpcRequest<T>) -> MetadataMap {
    let mut outgoing = super::forwarded(());
    for key in [TOKEN_HEADER, AUTHORIZATION_HEADER, SEQUENCER_HEADER] {
        if let Some(value) = request.metadata().get(key) {
            outgoing.metadata_mut().insert(key, value.clone());
        }
    }
    // The user of a client certificate this member verified; the master
    // believes it only from a member.
    let certificate_user = request
        .extensions()
        .get::<ClientCertificate>()
        .and_then(|certificate| certificate.common_name.as_deref())
        .and_then(|name| tonic::metadata::MetadataValue::try_from(name).ok());
    if let Some(user) = certificate_user {
        outgoing.metadata_mut().insert(FORWARDED_USER_HEADER, user);
    }
    outgoing.into_parts().0
}

/// A new request carrying `message` with the credentials of `from` (its
/// token and its client certificate), for a call a service makes to another
/// on its client's behalf.
pub fn with_credentials_of<T, U>(from: &GrpcRequest<T>, message: U) -> GrpcRequest<U> {
    let mut request = GrpcRequest::new(message);
    for key in [TOKEN_HEADER, AUTHORIZATION_HEADER] {
        if let Some(value) = from.metadata().get(key) {
            request.metadata_mut().insert(key, value.clone());
        }
    }
    if let Some(certificate) = from.extensions().get::<ClientCertificate>() {
        request.extensions_mut().insert(certificate.clone());
    }
    request
}

impl Api {
    /// Who `request` runs as: anyone while auth is disabled; else the user
    /// its token stands for (an unknown or expired token is refused with
    /// `invalid auth token`, on which etcd's clients authenticate again), or
    /// its certificate's common name, or no one. Reads the request before it
    /// waits, so the future holds nothing of it.
    pub fn caller<T>(&self, request: &GrpcRequest<T>) -> impl Future<Output = Result<Caller, Status>> + Send + '_ {
        let credentials = self.credentials(request);
        async move {
            match credentials? {
                Credentials::Token(token) if self.jwt.is_some() => self.user_of_jwt(&token),
                Credentials::Token(token) => match self.user_of_token(&token).await {
                    Some(user) => Ok(Caller::Client(Some(user))),
                    None => Err(convert::kv_error(KvError::InvalidAuthToken)),
                },
                Credentials::User(user) => Ok(Caller::Client(user)),
            }
        }
    }

    fn credentials<T>(&self, request: &GrpcRequest<T>) -> Result<Credentials, Status> {
        if !self.shared.store().auth().enabled() {
            return Ok(Credentials::User(None));
        }
        if let Some(token) = token_of(request.metadata())? {
            return Ok(Credentials::Token(token.to_string()));
        }
        if !self.certificate_users {
            return Ok(Credentials::User(None));
        }
        let certificate = request.extensions().get::<ClientCertificate>();
        if !request.metadata().contains_key(FORWARDED_HEADER) {
            return Ok(Credentials::User(
                certificate.and_then(|certificate| certificate.common_name.clone()),
            ));
        }
        // A forwarded call comes with the forwarding member's certificate,
        // not the client's: the member says whose it verified.
        let from_member = certificate
            .and_then(|certificate| certificate.member_name.as_deref())
            .is_some_and(|name| self.shared.identity.members.iter().any(|member| member.name == name));
        let user = request
            .metadata()
            .get(FORWARDED_USER_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|_| from_member)
            .map(str::to_string);
        Ok(Credentials::User(user))
    }

    /// The user of a JWT this group signed, if it is valid, not expired and
    /// issued at the current auth revision.
    fn user_of_jwt(&self, token: &str) -> Result<Caller, Status> {
        let keys = self
            .jwt
            .as_ref()
            .ok_or_else(|| convert::kv_error(KvError::InvalidAuthToken))?;
        let (user, revision) = keys
            .verify(token)
            .ok_or_else(|| convert::kv_error(KvError::InvalidAuthToken))?;
        if revision < self.shared.store().auth().revision() {
            return Err(convert::kv_error(KvError::AuthOldRevision));
        }
        Ok(Caller::Client(Some(user)))
    }

    /// The user `token` stands for. A token just issued is known to this
    /// member only once it has applied the `Authenticate` entry, which the
    /// master may have answered a heartbeat earlier: so an unknown token is
    /// looked up again as this member applies entries, for at most
    /// [`TOKEN_WAIT`], before it is refused.
    async fn user_of_token(&self, token: &str) -> Option<String> {
        let deadline = tokio::time::Instant::now() + TOKEN_WAIT;
        let mut applied = self.shared.status.clone();
        loop {
            applied.borrow_and_update();
            if let Some(user) = self.shared.tokens.user_of(token) {
                return Some(user);
            }
            if tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
                return self.shared.tokens.user_of(token);
            }
        }
    }

    /// Whether `caller` may read the keys from `key` to `range_end`.
    pub fn check_read(&self, caller: &Caller, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        if *caller == Caller::Server {
            return Ok(());
        }
        let auth = self.shared.store();
        auth.auth()
            .check_range(caller.user(), synod_kv::Access::Read, key, range_end)
            .map_err(convert::kv_error)
    }

    /// Whether `caller` may do everything (root, or auth disabled).
    pub fn check_admin(&self, caller: &Caller) -> Result<(), Status> {
        if *caller == Caller::Server {
            return Ok(());
        }
        let store = self.shared.store();
        store.auth().check_admin(caller.user()).map_err(convert::kv_error)
    }

    /// Whether `caller` names an existing user, if auth is enabled.
    pub fn check_authenticated(&self, caller: &Caller) -> Result<(), Status> {
        if *caller == Caller::Server {
            return Ok(());
        }
        let store = self.shared.store();
        store
            .auth()
            .check_authenticated(caller.user())
            .map_err(convert::kv_error)
    }

    /// Whether `caller` may see lease `id`: root, or read on every key
    /// attached to it, as etcd's LeaseTimeToLive asks.
    pub fn check_lease_read(&self, caller: &Caller, id: i64) -> Result<(), Status> {
        if self.check_admin(caller).is_ok() {
            return Ok(());
        }
        let store = self.shared.store();
        let auth = store.auth();
        match store.lease(id) {
            Some(lease) => lease
                .keys
                .iter()
                .try_for_each(|key| auth.check_range(caller.user(), synod_kv::Access::Read, key, &[]))
                .map_err(convert::kv_error),
            None => auth.check_authenticated(caller.user()).map_err(convert::kv_error),
        }
    }

    /// A bcrypt hash of `password` at the configured cost, off the async threads.
    async fn hash_password(&self, password: String) -> Result<String, Status> {
        if password.len() > PASSWORD_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "synod: a password is at most {PASSWORD_BYTES_MAX} bytes"
            )));
        }
        let cost = self.shared.tunables.bcrypt_cost;
        let _permit = self.password_checks.acquire().await.map_err(|_| super::timed_out())?;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|_| Status::internal("synod: password hashing stopped"))?
            .map_err(|error| Status::internal(format!("synod: cannot hash the password: {error}")))
    }

    /// Whether `password` matches `hash`, off the async threads.
    async fn password_matches(&self, password: String, hash: String) -> Result<bool, Status> {
        let _permit = self.password_checks.acquire().await.map_err(|_| super::timed_out())?;
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .map_err(|_| Status::internal("synod: password checking stopped"))
    }

    /// An auth change through the log at the master, on behalf of `caller`.
    async fn auth_write(&self, caller: &Caller, request: AuthRequest) -> Result<Option<ResponseHeader>, Status> {
        match self.write(caller, Request::Auth(request)).await? {
            Response::Auth(response) => Ok(self.identity().header(response.header.revision)),
            _ => Err(Status::internal(
                "synod: the state machine answered an auth request with another",
            )),
        }
    }

    /// The header of an auth read at the master, after its read point: taken
    /// before the caller is checked, so the check sees every auth change that
    /// finished before the call.
    async fn auth_read_header(&self) -> Result<Option<ResponseHeader>, Status> {
        self.linearizable_point().await?;
        let revision = self.shared.store().revision();
        Ok(self.identity().header(revision))
    }

    async fn authenticate_here(&self, name: String, password: String) -> Result<AuthenticateResponse, Status> {
        let (hash, auth_revision) = {
            let store = self.shared.store();
            let auth = store.auth();
            if !auth.enabled() {
                return Err(convert::kv_error(KvError::AuthNotEnabled));
            }
            let hash = auth.user(&name).and_then(|user| user.password_hash.clone());
            (hash, auth.revision())
        };
        let failed = || convert::kv_error(KvError::AuthFailed);
        let hash = hash.ok_or_else(failed)?;
        if password.len() > PASSWORD_BYTES_MAX || !self.password_matches(password, hash).await? {
            return Err(failed());
        }
        if let Some(keys) = &self.jwt {
            let token = keys
                .sign(&name, auth_revision)
                .map_err(|error| Status::internal(format!("synod: cannot sign a token: {error}")))?;
            let header = self.identity().header(self.shared.store().revision());
            return Ok(AuthenticateResponse { header, token });
        }
        let token = tokens::new_token().map_err(|error| Status::internal(format!("synod: no randomness: {error}")))?;
        let request = AuthRequest::Authenticate {
            name,
            token_digest: tokens::digest(&token),
            auth_revision,
        };
        let header = self.auth_write(&Caller::Server, request).await?;
        Ok(AuthenticateResponse { header, token })
    }
}

fn client(channel: tonic::transport::Channel) -> AuthClient<tonic::transport::Channel> {
    AuthClient::new(channel)
}

fn permission_of(permission: Option<authpb::Permission>) -> Result<Permission, Status> {
    let permission = permission.ok_or_else(|| Status::invalid_argument("etcdserver: permission not given"))?;
    let perm_type = PermissionType::of_code(i64::from(permission.perm_type))
        .ok_or_else(|| Status::invalid_argument("synod: unknown permission type"))?;
    Ok(Permission {
        perm_type,
        key: permission.key.to_vec(),
        range_end: permission.range_end.to_vec(),
    })
}

/// Answers a call at the master, or forwards it there with its token.
macro_rules! at_master {
    ($api:expr, $request:ident, $method:ident) => {
        if let Some(channel) = $api.route(&$request)? {
            return client(channel).$method(forward($request)).await;
        }
    };
}

#[tonic::async_trait]
impl Auth for Api {
    async fn auth_enable(
        &self,
        request: GrpcRequest<AuthEnableRequest>,
    ) -> Result<GrpcResponse<AuthEnableResponse>, Status> {
        at_master!(self, request, auth_enable);
        let caller = self.caller(&request).await?;
        let header = self.auth_write(&caller, AuthRequest::Enable).await?;
        Ok(GrpcResponse::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: GrpcRequest<AuthDisableRequest>,
    ) -> Result<GrpcResponse<AuthDisableResponse>, Status> {
        at_master!(self, request, auth_disable);
        let caller = self.caller(&request).await?;
        let header = self.auth_write(&caller, AuthRequest::Disable).await?;
        Ok(GrpcResponse::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        request: GrpcRequest<AuthStatusRequest>,
    ) -> Result<GrpcResponse<AuthStatusResponse>, Status> {
        at_master!(self, request, auth_status);
        let header = self.auth_read_header().await?;
        let store = self.shared.store();
        Ok(GrpcResponse::new(AuthStatusResponse {
            header,
            enabled: store.auth().enabled(),
            auth_revision: store.auth().revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: GrpcRequest<AuthenticateRequest>,
    ) -> Result<GrpcResponse<AuthenticateResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            let name = request.get_ref().name.clone();
            let response = client(channel).authenticate(forward(request)).await?;
            // The master answers once it applied the entry; this member may
            // not have yet, and the client's next call may come here. (A JWT
            // needs no such thing.)
            if self.jwt.is_none() {
                self.shared
                    .tokens
                    .register(tokens::digest(&response.get_ref().token), &name);
            }
            return Ok(response);
        }
        let AuthenticateRequest { name, password } = request.into_inner();
        Ok(GrpcResponse::new(self.authenticate_here(name, password).await?))
    }

    async fn user_add(
        &self,
        request: GrpcRequest<AuthUserAddRequest>,
    ) -> Result<GrpcResponse<AuthUserAddResponse>, Status> {
        at_master!(self, request, user_add);
        let caller = self.caller(&request).await?;
        // Before the costly hash, so a caller who may not add users cannot
        // make this member hash for it.
        self.check_admin(&caller)?;
        let AuthUserAddRequest {
            name,
            password,
            options,
            hashed_password,
        } = request.into_inner();
        if name.is_empty() {
            return Err(convert::kv_error(KvError::UserEmpty));
        }
        let no_password = options.is_some_and(|options| options.no_password);
        let password_hash = if no_password {
            None
        } else if !hashed_password.is_empty() {
            if bcrypt::verify("", &hashed_password).is_err() {
                return Err(Status::invalid_argument("synod: hashed_password is not a bcrypt hash"));
            }
            Some(hashed_password)
        } else {
            Some(self.hash_password(password).await?)
        };
        let header = self
            .auth_write(&caller, AuthRequest::UserAdd { name, password_hash })
            .await?;
        Ok(GrpcResponse::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: GrpcRequest<AuthUserGetRequest>,
    ) -> Result<GrpcResponse<AuthUserGetResponse>, Status> {
        at_master!(self, request, user_get);
        let caller = self.caller(&request).await?;
        let name = request.into_inner().name;
        let header = self.auth_read_header().await?;
        if caller.user() != Some(name.as_str()) {
            self.check_admin(&caller)?;
        }
        let store = self.shared.store();
        let user = store
            .auth()
            .user(&name)
            .ok_or_else(|| convert::kv_error(KvError::UserNotFound))?;
        Ok(GrpcResponse::new(AuthUserGetResponse {
            header,
            roles: user.roles.iter().cloned().collect(),
        }))
    }

    async fn user_list(
        &self,
        request: GrpcRequest<AuthUserListRequest>,
    ) -> Result<GrpcResponse<AuthUserListResponse>, Status> {
        at_master!(self, request, user_list);
        let caller = self.caller(&request).await?;
        let header = self.auth_read_header().await?;
        self.check_admin(&caller)?;
        let users = self.shared.store().auth().user_names();
        Ok(GrpcResponse::new(AuthUserListResponse { header, users }))
    }

    async fn user_delete(
        &self,
        request: GrpcRequest<AuthUserDeleteRequest>,
    ) -> Result<GrpcResponse<AuthUserDeleteResponse>, Status> {
        at_master!(self, request, user_delete);
        let caller = self.caller(&request).await?;
        let name = request.into_inner().name;
        let header = self.auth_write(&caller, AuthRequest::UserDelete { name }).await?;
        Ok(GrpcResponse::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: GrpcRequest<AuthUserChangePasswordRequest>,
    ) -> Result<GrpcResponse<AuthUserChangePasswordResponse>, Status> {
        at_master!(self, request, user_change_password);
        let caller = self.caller(&request).await?;
        self.check_admin(&caller)?;
        let AuthUserChangePasswordRequest {
            name,
            password,
            hashed_password,
        } = request.into_inner();
        let password_hash = if hashed_password.is_empty() {
            self.hash_password(password).await?
        } else if bcrypt::verify("", &hashed_password).is_ok() {
            hashed_password
        } else {
            return Err(Status::invalid_argument("synod: hashed_password is not a bcrypt hash"));
        };
        let header = self
            .auth_write(&caller, AuthRequest::UserChangePassword { name, password_hash })
            .await?;
        Ok(GrpcResponse::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: GrpcRequest<AuthUserGrantRoleRequest>,
    ) -> Result<GrpcResponse<AuthUserGrantRoleResponse>, Status> {
        at_master!(self, request, user_grant_role);
        let caller = self.caller(&request).await?;
        let AuthUserGrantRoleRequest { user, role } = request.into_inner();
        let header = self
            .auth_write(&caller, AuthRequest::UserGrantRole { user, role })
            .await?;
        Ok(GrpcResponse::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: GrpcRequest<AuthUserRevokeRoleRequest>,
    ) -> Result<GrpcResponse<AuthUserRevokeRoleResponse>, Status> {
        at_master!(self, request, user_revoke_role);
        let caller = self.caller(&request).await?;
        let AuthUserRevokeRoleRequest { name, role } = request.into_inner();
        let header = self
            .auth_write(&caller, AuthRequest::UserRevokeRole { name, role })
            .await?;
        Ok(GrpcResponse::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: GrpcRequest<AuthRoleAddRequest>,
    ) -> Result<GrpcResponse<AuthRoleAddResponse>, Status> {
        at_master!(self, request, role_add);
        let caller = self.caller(&request).await?;
        let name = request.into_inner().name;
        let header = self.auth_write(&caller, AuthRequest::RoleAdd { name }).await?;
        Ok(GrpcResponse::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: GrpcRequest<AuthRoleGetRequest>,
    ) -> Result<GrpcResponse<AuthRoleGetResponse>, Status> {
        at_master!(self, request, role_get);
        let caller = self.caller(&request).await?;
        let role = request.into_inner().role;
        let header = self.auth_read_header().await?;
        let own = caller.user().is_some_and(|user| {
            let store = self.shared.store();
            store.auth().user(user).is_some_and(|user| user.roles.contains(&role))
        });
        if !own {
            self.check_admin(&caller)?;
        }
        let store = self.shared.store();
        let found = store
            .auth()
            .role(&role)
            .ok_or_else(|| convert::kv_error(KvError::RoleNotFound))?;
        let perm = found
            .permissions
            .iter()
            .map(|permission| authpb::Permission {
                perm_type: i32::from(permission.perm_type.code()),
                key: permission.key.clone().into(),
                range_end: permission.range_end.clone().into(),
            })
            .collect();
        Ok(GrpcResponse::new(AuthRoleGetResponse { header, perm }))
    }

    async fn role_list(
        &self,
        request: GrpcRequest<AuthRoleListRequest>,
    ) -> Result<GrpcResponse<AuthRoleListResponse>, Status> {
        at_master!(self, request, role_list);
        let caller = self.caller(&request).await?;
        let header = self.auth_read_header().await?;
        self.check_admin(&caller)?;
        let roles = self.shared.store().auth().role_names();
        Ok(GrpcResponse::new(AuthRoleListResponse { header, roles }))
    }

    async fn role_delete(
        &self,
        request: GrpcRequest<AuthRoleDeleteRequest>,
    ) -> Result<GrpcResponse<AuthRoleDeleteResponse>, Status> {
        at_master!(self, request, role_delete);
        let caller = self.caller(&request).await?;
        let role = request.into_inner().role;
        let header = self.auth_write(&caller, AuthRequest::RoleDelete { role }).await?;
        Ok(GrpcResponse::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: GrpcRequest<AuthRoleGrantPermissionRequest>,
    ) -> Result<GrpcResponse<AuthRoleGrantPermissionResponse>, Status> {
        at_master!(self, request, role_grant_permission);
        let caller = self.caller(&request).await?;
        let AuthRoleGrantPermissionRequest { name, perm } = request.into_inner();
        let permission = permission_of(perm)?;
        let header = self
            .auth_write(&caller, AuthRequest::RoleGrantPermission { name, permission })
            .await?;
        Ok(GrpcResponse::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: GrpcRequest<AuthRoleRevokePermissionRequest>,
    ) -> Result<GrpcResponse<AuthRoleRevokePermissionResponse>, Status> {
        at_master!(self, request, role_revoke_permission);
        let caller = self.caller(&request).await?;
        let AuthRoleRevokePermissionRequest { role, key, range_end } = request.into_inner();
        let request = AuthRequest::RoleRevokePermission {
            role,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        };
        let header = self.auth_write(&caller, request).await?;
        Ok(GrpcResponse::new(AuthRoleRevokePermissionResponse { header }))
    }
}

/// How many password checks may run at once, as a semaphore.
pub fn password_checks() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(PASSWORD_CHECKS_MAX))
}
