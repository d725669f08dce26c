//! `users/register/`, `login/`, `login/refresh/`, `logout/` and
//! `PATCH users/users/<id>/`, in simplejwt's and Django REST framework's shapes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use events::store::RecordedEvent;

use super::{metadata, publish_in_background};
use crate::auth::{password, TokenKind, TokenUser};
use crate::client_address::ClientAddress;
use crate::domain::sessions::{self, RefreshRefused};
use crate::domain::users::{self, AccountsLock, FieldErrors, LockError, USERNAME_TAKEN};
use crate::error::ApiError;
use crate::extract::{CorrelationId, Payload};
use crate::openapi::{LoggedIn, LoggedOut, Registered, TokenPair};
use crate::state::AppState;
use crate::views::ok;

/// The app sends these as a form or as JSON.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    username: Option<String>,
    password: Option<String>,
    email: Option<String>,
}

/// The account a `/users/users/<id>/` path names, which must be the caller's.
fn own_account(id: &str, caller: i64) -> Result<i64, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::NotFound("No such user.".into()))?;
    if id != caller {
        return Err(ApiError::PermissionDenied);
    }
    Ok(id)
}

fn taken() -> ApiError {
    ApiError::FieldErrors(FieldErrors::from([(
        "username",
        vec![USERNAME_TAKEN.to_string()],
    )]))
}

fn fail_on(errors: FieldErrors) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::FieldErrors(errors))
    }
}

impl From<LockError> for ApiError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Busy => {
                ApiError::Unavailable("Too many account changes at once; please try again.".into())
            }
            LockError::Database(e) => e.into(),
        }
    }
}

/// Creates an account. The username and the email are unique, compared without case.
#[utoipa::path(post, path = "/users/register", tag = "users", request_body(content((Credentials = "application/json"), (Credentials = "application/x-www-form-urlencoded"))),
    responses((status = 201, description = "The account as stored.", body = Registered)))]
pub async fn register(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Payload(body): Payload<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    state.limits.register(address)?;
    let mut errors = FieldErrors::new();
    users::check_username(body.username.as_deref(), true, &mut errors);
    users::check_password(body.password.as_deref(), true, &mut errors);
    users::check_email(body.email.as_deref(), &mut errors);
    fail_on(errors)?;
    let (Some(username), Some(password)) = (body.username, body.password) else {
        return Err(ApiError::BadRequest(
            "username and password are required".into(),
        ));
    };
    let username = username.trim().to_string();
    let email = body.email.unwrap_or_default().trim().to_string();
    // Hash before taking the lock: the lock is held for the checks and the insert only.
    let hash = password::hash(password).await?;
    let mut lock = AccountsLock::acquire(&state.pool).await?;
    let mut errors = FieldErrors::new();
    let checked = users::check_identity_free(
        lock.conn(),
        Some(&username),
        Some(&email),
        None,
        &mut errors,
    )
    .await;
    let inserted = match checked {
        Ok(()) if errors.is_empty() => users::insert(lock.conn(), &username, &email, &hash).await,
        Ok(()) => Ok(None),
        Err(e) => Err(e),
    };
    lock.release().await;
    fail_on(errors)?;
    let user_id = inserted?.ok_or_else(taken)?;
    state.users.remember(user_id);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "code": 201, "msg": "OK", "data": { "username": username, "email": email } })),
    ))
}

/// Starts a session: an access token and a refresh token. `username` may also be
/// the account's email.
#[utoipa::path(post, path = "/login", tag = "users", request_body(content((Credentials = "application/json"), (Credentials = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "The session's tokens.", body = LoggedIn)))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    correlation: CorrelationId,
    Payload(body): Payload<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let mut errors = FieldErrors::new();
    if body.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
        errors.insert("username", vec!["This field is required.".into()]);
    }
    if body.password.as_deref().is_none_or(str::is_empty) {
        errors.insert("password", vec!["This field is required.".into()]);
    }
    fail_on(errors)?;
    let (Some(login), Some(password)) = (body.username, body.password) else {
        return Err(ApiError::InvalidCredentials);
    };
    let user = users::find_for_login(&state.pool, login.trim()).await?;
    // Failures count against the account tried (whatever spelling found it), or
    // the name when there is none; a blocked guess is never tried, even one
    // queued for hashing when the block began.
    let account = match &user {
        Some(user) => format!("user {}", user.id),
        None => format!("name {}", login.trim()),
    };
    state.limits.login_allowed(address, &account)?;
    let limits = state.limits.clone();
    let matched = password::verify_once_allowed(
        password,
        user.as_ref().map(|u| u.password_hash.clone()),
        || limits.login_allowed(address, &account),
    )
    .await?;
    // An unknown user never matches; the dummy check took as long as a real one,
    // so the answer does not tell which names exist.
    let Some(user) = user.filter(|_| matched) else {
        state.limits.login_failed(address, &account);
        return Err(ApiError::InvalidCredentials);
    };
    let session = sessions::start(
        &state.store,
        user.id,
        metadata(correlation.clone(), user.id),
    )
    .await?;
    // A password change that ran while this login checked the old hash: its
    // version check (in memory, for a while) would refuse this session's tokens,
    // but the login, however late it finishes, must not hand out any.
    let now = users::find(&state.pool, user.id)
        .await?
        .map(|u| u.credentials_version);
    if now != Some(user.credentials_version) {
        let events = sessions::revoke(
            &state.store,
            session.session_id,
            user.id,
            sessions::REASON_PASSWORD_CHANGED,
            metadata(correlation, user.id),
        )
        .await?;
        revoked(&state, events, &[session.session_id.to_string()]);
        return Err(ApiError::InvalidCredentials);
    }
    let (access, refresh) = state
        .jwt
        .pair(
            (
                user.id,
                &session.session_id.to_string(),
                user.credentials_version,
            ),
            &session.refresh_jti,
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    state.users.remember(user.id);
    publish_in_background(&state, session.events);
    Ok(Json(json!({
        "code": 200,
        "msg": "OK",
        "user_id": user.id,
        "username": user.username,
        "email": user.email,
        "access": access,
        "refresh": refresh,
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RefreshBody {
    #[schema(required = true)]
    refresh: Option<String>,
}

fn refresh_token_not_valid() -> ApiError {
    ApiError::TokenNotValid {
        detail: "Token is invalid or expired",
        access_messages: false,
    }
}

/// The refresh token of a body, checked for signature, type and expiry.
fn refresh_claims(
    state: &AppState,
    body: RefreshBody,
) -> Result<crate::auth::jwt::Claims, ApiError> {
    let Some(token) = body.refresh.filter(|t| !t.trim().is_empty()) else {
        return Err(ApiError::FieldErrors(FieldErrors::from([(
            "refresh",
            vec!["This field is required.".to_string()],
        )])));
    };
    state
        .jwt
        .verify(token.trim(), TokenKind::Refresh)
        .map_err(|_| refresh_token_not_valid())
}

/// Revocations take effect in this process at once, and in the others through the
/// bus (or their next reload).
fn revoked(state: &AppState, events: Vec<RecordedEvent>, sessions: &[String]) {
    for sid in sessions {
        state.sessions.revoke(sid);
    }
    publish_in_background(state, events);
}

/// Trades a refresh token for a new pair. A refresh token is spent once; presenting
/// a spent one again revokes its session.
#[utoipa::path(post, path = "/login/refresh", tag = "users", request_body(content((RefreshBody = "application/json"), (RefreshBody = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "A new pair.", body = TokenPair)))]
pub async fn refresh(
    State(state): State<AppState>,
    correlation: CorrelationId,
    Payload(body): Payload<RefreshBody>,
) -> Result<impl IntoResponse, ApiError> {
    let claims = refresh_claims(&state, body)?;
    // The password changed since this session started (its login may have raced
    // the change): the session is over, whatever the revocations say.
    let credentials = users::find(&state.pool, claims.user_id)
        .await?
        .map(|u| u.credentials_version);
    match credentials {
        Some(version) if version == claims.cv => {}
        Some(version) => {
            state.sessions.raise_credentials(claims.user_id, version);
            return Err(refresh_token_not_valid());
        }
        None => return Err(refresh_token_not_valid()),
    }
    let refreshed = sessions::refresh(
        &state.store,
        &claims.sid,
        &claims.jti,
        claims.user_id,
        metadata(correlation, claims.user_id),
    )
    .await?;
    let session = match refreshed {
        Ok(session) => session,
        Err(RefreshRefused::NoSession) => return Err(refresh_token_not_valid()),
        Err(RefreshRefused::Reused { revoked: events }) => {
            tracing::warn!(user_id = claims.user_id, session = %claims.sid,
                "a spent refresh token was presented again; the session is revoked");
            revoked(&state, events, &[claims.sid]);
            return Err(refresh_token_not_valid());
        }
    };
    let (access, refresh) = state
        .jwt
        .pair(
            (claims.user_id, &claims.sid, claims.cv),
            &session.refresh_jti,
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    publish_in_background(&state, session.events);
    Ok(Json(json!({ "access": access, "refresh": refresh })))
}

/// Ends the refresh token's session on every api: its tokens, streams and
/// long-polls stop.
#[utoipa::path(post, path = "/logout", tag = "users", request_body(content((RefreshBody = "application/json"), (RefreshBody = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "The session is over.", body = LoggedOut)))]
pub async fn logout(
    State(state): State<AppState>,
    correlation: CorrelationId,
    Payload(body): Payload<RefreshBody>,
) -> Result<impl IntoResponse, ApiError> {
    let claims = refresh_claims(&state, body)?;
    let session_id = uuid::Uuid::parse_str(&claims.sid).map_err(|_| refresh_token_not_valid())?;
    let events = sessions::revoke(
        &state.store,
        session_id,
        claims.user_id,
        sessions::REASON_LOGOUT,
        metadata(correlation, claims.user_id),
    )
    .await?;
    revoked(&state, events, &[claims.sid]);
    Ok(Json(json!({ "code": 200, "msg": "OK" })))
}

/// Changes the caller's own username, email or password. A new password ends
/// every session of the account.
#[utoipa::path(patch, path = "/users/users/{id}", operation_id = "update_user", tag = "users", request_body(content((Credentials = "application/json"), (Credentials = "application/x-www-form-urlencoded"))),
    params(("id" = i64, Path, description = "The caller's own user id.")),
    responses((status = 200, description = "The account as stored.", body = Registered)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    TokenUser(caller): TokenUser,
    correlation: CorrelationId,
    Path(id): Path<String>,
    Payload(body): Payload<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let id = own_account(&id, caller)?;
    let mut errors = FieldErrors::new();
    users::check_username(body.username.as_deref(), false, &mut errors);
    users::check_password(body.password.as_deref(), false, &mut errors);
    users::check_email(body.email.as_deref(), &mut errors);
    fail_on(errors)?;
    let username = body.username.map(|u| u.trim().to_string());
    let email = body.email.map(|e| e.trim().to_string());
    let hash = match body.password {
        Some(p) => Some(password::hash(p).await?),
        None => None,
    };
    let mut lock = AccountsLock::acquire(&state.pool).await?;
    let mut errors = FieldErrors::new();
    let checked = users::check_identity_free(
        lock.conn(),
        username.as_deref(),
        email.as_deref(),
        Some(id),
        &mut errors,
    )
    .await;
    let updated = match checked {
        Ok(()) if errors.is_empty() => {
            users::update(
                lock.conn(),
                id,
                username.as_deref(),
                email.as_deref(),
                hash.as_deref(),
            )
            .await
        }
        Ok(()) => Ok(true),
        Err(e) => Err(e),
    };
    lock.release().await;
    fail_on(errors)?;
    if !updated? {
        return Err(taken());
    }
    let user = users::find(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such user.".into()))?;
    if hash.is_some() {
        // Whoever held a token of this account before the change holds nothing
        // now: the new credentials version (committed with the hash) refuses
        // every older token, here at once and on the other apis as soon as the
        // revocations below reach them. Revoking the sessions also ends them in
        // the read model.
        state
            .sessions
            .raise_credentials(id, user.credentials_version);
        let (ids, events) = sessions::revoke_all(
            &state.store,
            id,
            sessions::REASON_PASSWORD_CHANGED,
            metadata(correlation, id),
        )
        .await?;
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        revoked(&state, events, &ids);
    }
    Ok(ok(
        json!({ "username": user.username, "email": user.email }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Erasure {
    /// The account's password, once more.
    #[schema(required = true)]
    password: Option<String>,
}

/// Deletes the caller's account and everything they wrote: every session is
/// revoked, their keys destroyed, their texts in the log blanked, their rows
/// gone from every view. Cannot be undone.
#[utoipa::path(delete, path = "/users/users/{id}", operation_id = "erase_user", tag = "users", request_body(content((Erasure = "application/json"), (Erasure = "application/x-www-form-urlencoded"))),
    params(("id" = i64, Path, description = "The caller's own user id.")),
    responses((status = 200, description = "Erased.", body = LoggedOut)),
    security(("bearer" = [])))]
pub async fn erase(
    State(state): State<AppState>,
    TokenUser(caller): TokenUser,
    correlation: CorrelationId,
    Path(id): Path<String>,
    Payload(body): Payload<Erasure>,
) -> Result<impl IntoResponse, ApiError> {
    let id = own_account(&id, caller)?;
    let Some(given) = body.password.filter(|p| !p.is_empty()) else {
        return Err(ApiError::FieldErrors(FieldErrors::from([(
            "password",
            vec!["This field is required.".to_string()],
        )])));
    };
    let user = users::find(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such user.".into()))?;
    if !password::verify_once_allowed(given, Some(user.password_hash), || Ok(())).await? {
        return Err(ApiError::Unauthorized(
            "The password is wrong; the account is unchanged.".into(),
        ));
    }
    let (sessions, events) = crate::domain::erasure::erase_account(
        (&state.store, &state.keyring),
        id,
        metadata(correlation, id),
    )
    .await?;
    state.read_cache.invalidate(id);
    tracing::info!(user_id = id, "account erased");
    let sessions: Vec<String> = sessions.iter().map(ToString::to_string).collect();
    revoked(&state, events, &sessions);
    Ok(Json(json!({ "code": 200, "msg": "OK" })))
}
