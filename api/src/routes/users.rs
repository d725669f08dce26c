//! `users/register/`, `login/`, `login/refresh/` and `PATCH users/users/<id>/`, in
//! simplejwt's and Django REST framework's shapes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{password, TokenKind, TokenUser};
use crate::domain::users::{self, FieldErrors, USERNAME_TAKEN};
use crate::error::ApiError;
use crate::extract::Payload;
use crate::state::AppState;
use crate::views::ok;

#[derive(Debug, Deserialize)]
pub struct Credentials {
    username: Option<String>,
    password: Option<String>,
    email: Option<String>,
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

pub async fn register(
    State(state): State<AppState>,
    Payload(body): Payload<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
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
    if users::username_taken(&state.pool, &username, None).await? {
        return Err(taken());
    }
    let hash = password::hash(password).await?;
    if users::insert(&state.pool, &username, &email, &hash)
        .await?
        .is_none()
    {
        return Err(taken());
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({ "code": 201, "msg": "OK", "data": { "username": username, "email": email } })),
    ))
}

pub async fn login(
    State(state): State<AppState>,
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
    let user = users::find_for_login(&state.pool, login.trim())
        .await?
        .ok_or(ApiError::InvalidCredentials)?;
    if !password::verify(password, user.password_hash.clone()).await? {
        return Err(ApiError::InvalidCredentials);
    }
    let (access, refresh) = state
        .jwt
        .pair(user.id)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
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

#[derive(Debug, Deserialize)]
pub struct RefreshBody {
    refresh: Option<String>,
}

pub async fn refresh(
    State(state): State<AppState>,
    Payload(body): Payload<RefreshBody>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(token) = body.refresh.filter(|t| !t.trim().is_empty()) else {
        return Err(ApiError::FieldErrors(FieldErrors::from([(
            "refresh",
            vec!["This field is required.".to_string()],
        )])));
    };
    let invalid = || ApiError::TokenNotValid {
        detail: "Token is invalid or expired",
        access_messages: false,
    };
    let claims = state
        .jwt
        .verify(token.trim(), TokenKind::Refresh)
        .map_err(|_| invalid())?;
    if users::find(&state.pool, claims.user_id).await?.is_none() {
        return Err(invalid());
    }
    let (access, refresh) = state
        .jwt
        .pair(claims.user_id)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({ "access": access, "refresh": refresh })))
}

pub async fn update(
    State(state): State<AppState>,
    TokenUser(caller): TokenUser,
    Path(id): Path<String>,
    Payload(body): Payload<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::NotFound("No such user.".into()))?;
    if id != caller {
        return Err(ApiError::PermissionDenied);
    }
    let mut errors = FieldErrors::new();
    users::check_username(body.username.as_deref(), false, &mut errors);
    users::check_password(body.password.as_deref(), false, &mut errors);
    users::check_email(body.email.as_deref(), &mut errors);
    fail_on(errors)?;
    let username = body.username.map(|u| u.trim().to_string());
    if let Some(name) = &username {
        if users::username_taken(&state.pool, name, Some(id)).await? {
            return Err(taken());
        }
    }
    let hash = match body.password {
        Some(p) => Some(password::hash(p).await?),
        None => None,
    };
    let email = body.email.map(|e| e.trim().to_string());
    if !users::update(
        &state.pool,
        id,
        username.as_deref(),
        email.as_deref(),
        hash.as_deref(),
    )
    .await?
    {
        return Err(taken());
    }
    let user = users::find(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such user.".into()))?;
    Ok(ok(
        json!({ "username": user.username, "email": user.email }),
    ))
}
